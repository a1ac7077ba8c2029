// Per-object pixel statistics of a label image in one raster pass: each object's first
// pixel, area, coordinate sums, bounding box and, optionally, the sum of a value map and
// the second moments of the coordinates.
//
// What tile ownership (python/nucseg/wsi/tiling.py) needs of every watershed basin. In
// NumPy it took a pass per quantity (flatnonzero, a fancy-indexed lookup, bincounts,
// ufunc.at minima and maxima), three times the watershed itself on a 1144^2 tile.
//
// The sums are those NumPy's bincount gives: coordinates summed exactly (int64), values
// summed in double in raster order, so results are bit for bit the same. Second moments
// (for morphometrics' axes and orientation) are exact too: sums of dy^2, dx^2 and dy dx
// over the pixels, dy and dx taken from the object's first pixel so that they stay small.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>

namespace nucseg {

// Arrays of n + 1 entries, indexed by label (entry 0, the background, is left as set
// here): first (flat index of the first pixel in raster order, -1 when the label is
// absent), area, sum_y, sum_x, sum_value (when values is not null) and box (4 per label:
// y0, x0, y1, x1 inclusive; y0 = x0 = INT64_MAX and y1 = x1 = -1 when absent) and, when
// second is not null, 3 per label: the sums of dy^2, dx^2 and dy * dx, (dy, dx) = (y, x)
// minus the label's first pixel.
// Throws std::invalid_argument for a label outside 0..n (the arrays are then partly written).
template <class L, class V>
void region_stats(const L* labels, const V* values, std::ptrdiff_t height, std::ptrdiff_t width, std::int64_t n,
                  std::int64_t* first, std::int64_t* area, std::int64_t* sum_y, std::int64_t* sum_x,
                  double* sum_value, std::int64_t* box, std::int64_t* second = nullptr) {
    constexpr std::int64_t kNone = std::numeric_limits<std::int64_t>::max();
    for (std::int64_t l = 0; l <= n; ++l) {
        first[l] = -1;
        area[l] = sum_y[l] = sum_x[l] = 0;
        if (values != nullptr) sum_value[l] = 0.0;
        box[4 * l] = box[4 * l + 1] = kNone;
        box[4 * l + 2] = box[4 * l + 3] = -1;
        if (second != nullptr) second[3 * l] = second[3 * l + 1] = second[3 * l + 2] = 0;
    }
    for (std::ptrdiff_t y = 0; y < height; ++y) {
        const L* row = labels + y * width;
        for (std::ptrdiff_t x = 0; x < width;) {
            const L l = row[x];
            if (l == 0) {
                ++x;
                continue;
            }
            if (l < 0 || static_cast<std::uint64_t>(l) > static_cast<std::uint64_t>(n))
                throw std::invalid_argument("region_stats: a label is outside 0..n");
            // The run of this label along the row: one update per run, except the values,
            // which are summed pixel by pixel in raster order (as bincount does).
            std::ptrdiff_t end = x + 1;
            while (end < width && row[end] == l) ++end;
            const std::int64_t k = end - x;
            if (first[l] < 0) first[l] = static_cast<std::int64_t>(y) * width + x;
            area[l] += k;
            sum_y[l] += static_cast<std::int64_t>(y) * k;
            sum_x[l] += (static_cast<std::int64_t>(x) + end - 1) * k / 2;
            if (values != nullptr) {
                const V* v = values + y * width;
                double s = sum_value[l];
                for (std::ptrdiff_t i = x; i < end; ++i) s += static_cast<double>(v[i]);
                sum_value[l] = s;
            }
            if (second != nullptr) {
                // Over the run, dx = a + j for j = 0..k-1: closed forms of its sums.
                const std::int64_t dy = static_cast<std::int64_t>(y) - first[l] / width;
                const std::int64_t a = static_cast<std::int64_t>(x) - first[l] % width;
                const std::int64_t t1 = k * (k - 1) / 2, t2 = (k - 1) * k * (2 * k - 1) / 6;
                const std::int64_t sum_dx = k * a + t1;
                std::int64_t* m = second + 3 * l;
                m[0] += k * dy * dy;
                m[1] += k * a * a + 2 * a * t1 + t2;
                m[2] += dy * sum_dx;
            }
            std::int64_t* b = box + 4 * l;
            b[0] = std::min<std::int64_t>(b[0], y);
            b[1] = std::min<std::int64_t>(b[1], x);
            b[2] = std::max<std::int64_t>(b[2], y);
            b[3] = std::max<std::int64_t>(b[3], end - 1);
            x = end;
        }
    }
}

}  // namespace nucseg
