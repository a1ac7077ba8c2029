// Perimeter and convex-hull area of every object of a label image, in one pass.
//
// The same numbers as scikit-image's regionprops `perimeter` (4-connected border,
// Benkrid/Crookes weights) and `area_convex` (pixels whose centres lie inside or on the
// convex hull of the object's pixels, each pixel taken as the diamond of its four edge
// midpoints: skimage.morphology.convex_hull_image with offset_coordinates=True), but
// without a Python call per object: the whole-slide runner measures millions of nuclei.
//
// Exact arithmetic: coordinates are doubled, so hull vertices and pixel centres are
// integers and the inside-or-on test has no rounding.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstddef>
#include <stdexcept>
#include <vector>

namespace nucseg {

namespace detail {

struct RowSpan {
    std::int32_t label;  // 1..n
    std::int64_t row, first, last;
};

struct Pt {
    std::int64_t x, y;  // doubled (column, row)
};

inline std::int64_t cross(const Pt& o, const Pt& a, const Pt& b) {
    return (a.x - o.x) * (b.y - o.y) - (a.y - o.y) * (b.x - o.x);
}

inline std::int64_t floor_div(std::int64_t n, std::int64_t d) {  // d > 0
    return n >= 0 ? n / d : -((-n + d - 1) / d);
}

inline std::int64_t ceil_div(std::int64_t n, std::int64_t d) {  // d > 0
    return -floor_div(-n, d);
}

// Andrew's monotone chain; collinear points dropped. Returns the hull with positive
// orientation (cross >= 0 for every point inside or on it).
inline std::vector<Pt> convex_hull(std::vector<Pt>& pts) {
    std::sort(pts.begin(), pts.end(), [](const Pt& a, const Pt& b) { return a.x != b.x ? a.x < b.x : a.y < b.y; });
    pts.erase(std::unique(pts.begin(), pts.end(), [](const Pt& a, const Pt& b) { return a.x == b.x && a.y == b.y; }),
              pts.end());
    if (pts.size() < 3) return pts;
    std::vector<Pt> hull(2 * pts.size());
    std::size_t k = 0;
    for (const Pt& p : pts) {
        while (k >= 2 && cross(hull[k - 2], hull[k - 1], p) <= 0) --k;
        hull[k++] = p;
    }
    for (std::size_t i = pts.size() - 1, lower = k + 1; i-- > 0;) {
        const Pt& p = pts[i];
        while (k >= lower && cross(hull[k - 2], hull[k - 1], p) <= 0) --k;
        hull[k++] = p;
    }
    hull.resize(k - 1);
    return hull;
}

// Pixel centres (doubled: even x, y = 2 * row) inside or on a positively oriented hull.
inline std::int64_t centres_in_hull(const std::vector<Pt>& hull, std::int64_t row0, std::int64_t row1) {
    std::int64_t count = 0;
    const std::size_t m = hull.size();
    for (std::int64_t r = row0; r <= row1; ++r) {
        const std::int64_t y = 2 * r;
        std::int64_t lo = INT64_MIN / 4, hi = INT64_MAX / 4;  // bounds on the doubled x
        bool empty = false;
        for (std::size_t i = 0; i < m && !empty; ++i) {
            const Pt& v = hull[i];
            const Pt& w = hull[(i + 1) % m];
            // cross(v, w, (x, y)) = a * x + b >= 0
            const std::int64_t a = -(w.y - v.y);
            const std::int64_t b = (w.x - v.x) * (y - v.y) + (w.y - v.y) * v.x;
            if (a > 0) {
                lo = std::max(lo, ceil_div(-b, a));
            } else if (a < 0) {
                hi = std::min(hi, floor_div(b, -a));
            } else if (b < 0) {
                empty = true;
            }
        }
        if (empty) continue;
        // Even x in [lo, hi]: columns ceil(lo / 2) .. floor(hi / 2).
        const std::int64_t c0 = ceil_div(lo, 2), c1 = floor_div(hi, 2);
        if (c1 >= c0) count += c1 - c0 + 1;
    }
    return count;
}

}  // namespace detail

// labels: (height, width) row-major, values 0 (background) or 1..n.
// perimeter[n], convex_area[n]: outputs, index k - 1 for object k (0 for an absent id).
template <class L>
void perimeter_and_convex_area(const L* labels, std::ptrdiff_t height, std::ptrdiff_t width, std::int64_t n,
                               double* perimeter, std::int64_t* convex_area) {
    const auto at = [&](std::ptrdiff_t r, std::ptrdiff_t c) -> L {
        return (r < 0 || c < 0 || r >= height || c >= width) ? L(0) : labels[r * width + c];
    };
    // Border pixels: in an object with a 4-neighbour outside it (the image edge counts).
    std::vector<std::uint8_t> border(static_cast<std::size_t>(height * width), 0);
    std::vector<detail::RowSpan> spans;
    std::vector<std::int64_t> span_of(static_cast<std::size_t>(n) + 1, -1);
    for (std::ptrdiff_t r = 0; r < height; ++r) {
        for (std::ptrdiff_t c = 0; c < width; ++c) {
            const L k = labels[r * width + c];
            if (k == 0) continue;
            if (k < 0 || static_cast<std::int64_t>(k) > n) throw std::invalid_argument("labels must be in 0..n");
            border[r * width + c] = at(r - 1, c) != k || at(r + 1, c) != k || at(r, c - 1) != k || at(r, c + 1) != k;
            std::int64_t& s = span_of[static_cast<std::size_t>(k)];
            if (s >= 0 && spans[static_cast<std::size_t>(s)].row == r) {
                spans[static_cast<std::size_t>(s)].last = c;
            } else {
                s = static_cast<std::int64_t>(spans.size());
                spans.push_back({static_cast<std::int32_t>(k), r, c, c});
            }
        }
    }
    // Perimeter: skimage's code 1 + 2 * (4-neighbour border pixels) + 10 * (diagonal ones),
    // counting only pixels of the same object, and its weights per code.
    std::vector<std::int64_t> straight(static_cast<std::size_t>(n), 0), diag(static_cast<std::size_t>(n), 0),
        corner(static_cast<std::size_t>(n), 0);
    const auto on_border = [&](std::ptrdiff_t r, std::ptrdiff_t c, L k) {
        return r >= 0 && c >= 0 && r < height && c < width && labels[r * width + c] == k && border[r * width + c];
    };
    for (std::ptrdiff_t r = 0; r < height; ++r) {
        for (std::ptrdiff_t c = 0; c < width; ++c) {
            if (!border[r * width + c]) continue;
            const L k = labels[r * width + c];
            const int code = 1 +
                             2 * (on_border(r - 1, c, k) + on_border(r + 1, c, k) + on_border(r, c - 1, k) +
                                  on_border(r, c + 1, k)) +
                             10 * (on_border(r - 1, c - 1, k) + on_border(r - 1, c + 1, k) +
                                   on_border(r + 1, c - 1, k) + on_border(r + 1, c + 1, k));
            const auto i = static_cast<std::size_t>(k) - 1;
            switch (code) {
                case 5: case 7: case 15: case 17: case 25: case 27: ++straight[i]; break;
                case 21: case 33: ++diag[i]; break;
                case 13: case 23: ++corner[i]; break;
                default: break;
            }
        }
    }
    const double sqrt2 = 1.4142135623730951;
    for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i) {
        perimeter[i] = static_cast<double>(straight[i]) + static_cast<double>(diag[i]) * sqrt2 +
                       static_cast<double>(corner[i]) * ((1.0 + sqrt2) / 2.0);
        convex_area[i] = 0;
    }
    // Convex area: group the row spans by object (counting sort keeps rows in order).
    std::vector<std::size_t> start(static_cast<std::size_t>(n) + 2, 0);
    for (const auto& s : spans) ++start[static_cast<std::size_t>(s.label) + 1];
    for (std::size_t k = 1; k < start.size(); ++k) start[k] += start[k - 1];
    std::vector<detail::RowSpan> grouped(spans.size());
    {
        std::vector<std::size_t> fill(start.begin(), start.end());
        for (const auto& s : spans) grouped[fill[static_cast<std::size_t>(s.label)]++] = s;
    }
    std::vector<detail::Pt> pts;
    for (std::int64_t k = 1; k <= n; ++k) {
        const std::size_t b = start[static_cast<std::size_t>(k)], e = start[static_cast<std::size_t>(k) + 1];
        if (b == e) continue;
        // Coordinates relative to the object's first row and leftmost column keep the cross
        // products small whatever the image size.
        const std::int64_t r0 = grouped[b].row;
        std::int64_t c0 = grouped[b].first;
        for (std::size_t j = b; j < e; ++j) c0 = std::min(c0, grouped[j].first);
        pts.clear();
        for (std::size_t j = b; j < e; ++j) {
            const auto& s = grouped[j];
            const std::int64_t y = 2 * (s.row - r0);
            for (const std::int64_t c : {s.first, s.last}) {  // the row's extremes bound its pixels' hull
                const std::int64_t x = 2 * (c - c0);
                pts.push_back({x, y - 1});
                pts.push_back({x, y + 1});
                pts.push_back({x - 1, y});
                pts.push_back({x + 1, y});
            }
        }
        const auto hull = detail::convex_hull(pts);
        convex_area[k - 1] = detail::centres_in_hull(hull, 0, grouped[e - 1].row - r0);
    }
}

}  // namespace nucseg
