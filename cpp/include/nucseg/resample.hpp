// Separable resampling of an interleaved uint8 image with precomputed taps.
//
// Each output pixel (y, x) is computed from k row taps (source row index, float weight)
// and k' column taps, in float32, in a fixed order:
//
//     v[j]  = s[iy0][j] * wy0;  v[j] = v[j] + s[iy1][j] * wy1;  ...   (vertical pass)
//     a     = v[ix0] * wx0;     a = a + v[ix1] * wx1;  ...            (horizontal pass)
//     out   = clip(rint(a), 0, 255)                                   (round half to even)
//
// the same float32 operations, in the same order, as the NumPy reference in
// tests/test_resample.py (and the slide runner's former pure-NumPy path). The value of an
// output pixel therefore depends only on its taps, not on which region it is computed in:
// the slide runner relies on that for bitwise tile invariance (python/nucseg/wsi/tiling.py).
//
// Bitwise identity needs each product rounded to float32 before it is added: the code
// that includes this header must be compiled without floating-point contraction
// (-ffp-contract=off; CMakeLists.txt sets it for the extension), otherwise a compiler
// targeting FMA hardware may fuse s * w + acc and change the last bit.
//
// Memory: one output row at a time, so the float32 intermediate is one source line
// (width * channels floats), whatever the image size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace nucseg {

// The taps of n output pixels along one axis: index and weight are n x k, row-major.
struct Taps {
    const std::int64_t* index;
    const float* weight;
    std::ptrdiff_t n;
    std::ptrdiff_t k;
};

namespace detail {

// Throws std::invalid_argument naming `name` when a tap leaves [0, n_src).
inline void check_taps(const Taps& taps, std::ptrdiff_t n_src, const char* name) {
    if (taps.k < 1) throw std::invalid_argument(std::string(name) + " must have at least one tap per output pixel");
    for (std::ptrdiff_t i = 0; i < taps.n * taps.k; ++i) {
        const std::int64_t s = taps.index[i];
        if (s < 0 || s >= n_src)
            throw std::invalid_argument(std::string(name) + "[" + std::to_string(i / taps.k) + ", " +
                                        std::to_string(i % taps.k) + "] = " + std::to_string(s) +
                                        " is outside the source's " + std::to_string(n_src) + " pixels");
    }
}

// clip(rint(a), 0, 255) as uint8. Clipping first gives the same result (rint is monotone
// and fixes 0 and 255), maps NaN to 0 (the comparisons fail) so the cast is always
// defined, and lets rounding use the 2^23 trick: for 0 <= a <= 255, a + 2^23 has no
// fraction bits left, so the addition rounds to nearest, ties to even, exactly as rint.
inline std::uint8_t to_u8(float a) {
    const float c = a > 0.0f ? (a < 255.0f ? a : 255.0f) : 0.0f;
    const float r = (c + 8388608.0f) - 8388608.0f;
    return static_cast<std::uint8_t>(r);
}

// v[j] = s[i0][j] * w0 + s[i1][j] * w1 + ..., accumulated left to right in float32.
// Independent lanes along j, so vectorising it does not change any bit.
inline void vertical(const std::uint8_t* src, std::ptrdiff_t line, const std::int64_t* index, const float* weight,
                     std::ptrdiff_t k, float* v) {
    const std::uint8_t* s0 = src + index[0] * line;
    const float w0 = weight[0];
    for (std::ptrdiff_t j = 0; j < line; ++j) v[j] = static_cast<float>(s0[j]) * w0;
    for (std::ptrdiff_t t = 1; t < k; ++t) {
        const std::uint8_t* s = src + index[t] * line;
        const float w = weight[t];
        for (std::ptrdiff_t j = 0; j < line; ++j) v[j] = v[j] + static_cast<float>(s[j]) * w;
    }
}

// One output row from one vertical line; `offset` holds the column taps premultiplied by
// the channel count. C > 0 fixes the channel count at compile time (unrolled), C == 0
// reads it from `channels`.
template <int C>
void horizontal(const float* v, const std::int64_t* offset, const float* weight, std::ptrdiff_t n,
                std::ptrdiff_t k, std::ptrdiff_t channels, std::uint8_t* out) {
    const std::ptrdiff_t ch = C > 0 ? C : channels;
    for (std::ptrdiff_t x = 0; x < n; ++x, offset += k, weight += k, out += ch) {
        for (std::ptrdiff_t c = 0; c < ch; ++c) {
            float a = v[offset[0] + c] * weight[0];
            for (std::ptrdiff_t t = 1; t < k; ++t) a = a + v[offset[t] + c] * weight[t];
            out[c] = to_u8(a);
        }
    }
}

template <int C>
void resample_rows(const std::uint8_t* src, std::ptrdiff_t width, std::ptrdiff_t channels, const Taps& rows,
                   const Taps& cols, std::uint8_t* dst) {
    const std::ptrdiff_t line = width * channels;
    std::vector<std::int64_t> offset(static_cast<std::size_t>(cols.n * cols.k));
    for (std::size_t i = 0; i < offset.size(); ++i) offset[i] = cols.index[i] * channels;
    std::vector<float> v(static_cast<std::size_t>(line));
    for (std::ptrdiff_t y = 0; y < rows.n; ++y) {
        vertical(src, line, rows.index + y * rows.k, rows.weight + y * rows.k, rows.k, v.data());
        horizontal<C>(v.data(), offset.data(), cols.weight, cols.n, cols.k, channels, dst + y * cols.n * channels);
    }
}

}  // namespace detail

// Resamples src (height x width x channels, C order, uint8) to dst (rows.n x cols.n x
// channels, uint8): vertical pass with `rows`, horizontal with `cols`, then round half to
// even and clip (see the top of this file for the exact arithmetic).
//
// Throws std::invalid_argument when a tap lies outside the source ("row_index[i, t] ..."
// or "col_index[i, t] ...") or an axis has no taps.
inline void resample_separable(const std::uint8_t* src, std::ptrdiff_t height, std::ptrdiff_t width,
                               std::ptrdiff_t channels, const Taps& rows, const Taps& cols, std::uint8_t* dst) {
    if (height < 0 || width < 0 || channels < 1)
        throw std::invalid_argument("the source must have a non-negative size and at least one channel");
    detail::check_taps(rows, height, "row_index");
    detail::check_taps(cols, width, "col_index");
    switch (channels) {
        case 1: return detail::resample_rows<1>(src, width, channels, rows, cols, dst);
        case 3: return detail::resample_rows<3>(src, width, channels, rows, cols, dst);
        case 4: return detail::resample_rows<4>(src, width, channels, rows, cols, dst);
        default: return detail::resample_rows<0>(src, width, channels, rows, cols, dst);
    }
}

}  // namespace nucseg
