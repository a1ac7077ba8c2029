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

// Convex hull of points sorted by (y, x), without repeats: Andrew's monotone chain along
// y, collinear points dropped. Only turns with cross > 0 are kept, so the hull has
// positive orientation (cross >= 0 for every point inside or on it).
inline std::vector<Pt> convex_hull_sorted(const std::vector<Pt>& pts) {
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
// Each edge (v, w) bounds the doubled x of a point (x, y) inside: cross(v, w, (x, y)) =
// a * x + b >= 0. On a row, the edges going up (a > 0) bound x from below and those going
// down from above, and of each kind only the edge whose y range holds the row binds (the
// hull is convex: every other edge's line leaves the row's inside points on its inner
// side). So the rows walk the two chains once: two divisions per row, not one per edge.
inline std::int64_t centres_in_hull(const std::vector<Pt>& hull, std::int64_t row0, std::int64_t row1) {
    struct Edge {
        std::int64_t y_end;  // the edge binds rows up to this doubled y
        std::int64_t a, b0, dx;  // a * x + b >= 0 with b = dx * y + b0
    };
    const std::size_t m = hull.size();
    std::vector<Edge> lower, upper;  // bound x from below / from above; sorted by y below
    std::int64_t y_min = INT64_MAX, y_max = INT64_MIN;
    for (std::size_t i = 0; i < m; ++i) {
        const Pt& v = hull[i];
        const Pt& w = hull[(i + 1) % m];
        y_min = std::min(y_min, v.y);
        y_max = std::max(y_max, v.y);
        const std::int64_t a = -(w.y - v.y);
        if (a == 0) continue;  // a horizontal edge lies on the hull's top or bottom row
        const std::int64_t dx = w.x - v.x;
        Edge e{std::max(v.y, w.y), a, (w.y - v.y) * v.x - dx * v.y, dx};
        (a > 0 ? lower : upper).push_back(e);
    }
    const auto by_y = [](const Edge& p, const Edge& q) { return p.y_end < q.y_end; };
    std::sort(lower.begin(), lower.end(), by_y);
    std::sort(upper.begin(), upper.end(), by_y);
    std::int64_t count = 0;
    std::size_t li = 0, ui = 0;
    for (std::int64_t r = row0; r <= row1; ++r) {
        const std::int64_t y = 2 * r;
        if (y < y_min || y > y_max || lower.empty() || upper.empty()) continue;
        while (li + 1 < lower.size() && lower[li].y_end < y) ++li;
        while (ui + 1 < upper.size() && upper[ui].y_end < y) ++ui;
        const Edge& l = lower[li];
        const Edge& u = upper[ui];
        const std::int64_t lo = ceil_div(-(l.dx * y + l.b0), l.a);
        const std::int64_t hi = floor_div(u.dx * y + u.b0, -u.a);
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
    struct Level {
        std::int64_t y, lo, hi;  // doubled row, its least and greatest doubled x
    };
    std::vector<Level> levels;
    std::vector<detail::Pt> pts;
    for (std::int64_t k = 1; k <= n; ++k) {
        const std::size_t b = start[static_cast<std::size_t>(k)], e = start[static_cast<std::size_t>(k) + 1];
        if (b == e) continue;
        // Coordinates relative to the object's first row and leftmost column keep the cross
        // products small whatever the image size.
        const std::int64_t r0 = grouped[b].row;
        std::int64_t c0 = grouped[b].first;
        for (std::size_t j = b; j < e; ++j) c0 = std::min(c0, grouped[j].first);
        // The hull of the pixels' diamonds: per doubled row y, only the leftmost and the
        // rightmost diamond corner can be hull vertices, and rows come sorted, so the
        // points are generated in (y, x) order (no sort).
        levels.clear();
        const auto add = [&](std::int64_t y, std::int64_t lo, std::int64_t hi) {
            if (!levels.empty() && levels.back().y == y) {
                levels.back().lo = std::min(levels.back().lo, lo);
                levels.back().hi = std::max(levels.back().hi, hi);
            } else {
                levels.push_back({y, lo, hi});
            }
        };
        for (std::size_t j = b; j < e; ++j) {
            const auto& s = grouped[j];
            const std::int64_t y = 2 * (s.row - r0), x0 = 2 * (s.first - c0), x1 = 2 * (s.last - c0);
            add(y - 1, x0, x1);
            add(y, x0 - 1, x1 + 1);
            add(y + 1, x0, x1);
        }
        pts.clear();
        for (const auto& l : levels) {
            pts.push_back({l.lo, l.y});
            if (l.hi != l.lo) pts.push_back({l.hi, l.y});
        }
        const auto hull = detail::convex_hull_sorted(pts);
        convex_area[k - 1] = detail::centres_in_hull(hull, 0, grouped[e - 1].row - r0);
    }
}

}  // namespace nucseg
