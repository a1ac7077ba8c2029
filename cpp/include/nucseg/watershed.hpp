// Dynamics-controlled watershed in one priority-queue sweep. Header-only, no Python.
//
// Contract (the Python wrapper nucseg.watershed_dynamics documents it in full):
//   F = {prob > threshold}. Regional maxima of prob inside F seed basins. Pixels are
//   flooded from the maxima downwards (highest value first, FIFO on ties). When the
//   connected components of the flooded set meet, the component with the lower peak
//   (ties: the younger basin) has just found its dynamics, peak - level: this is
//   exactly Grimaud's dynamics restricted to F, because every pixel at or above a
//   level is flooded before any pixel below it. A basin whose dynamics is <= lam is
//   merged (union-find) into the label it touches; two labels that are both markers
//   (dynamics > lam) meeting at a pixel make that pixel a watershed line.
//
// Passes: (1) one raster pass marks every pixel background, or foreground with or
// without a strictly higher neighbour (vectorised), cuts each row's foreground into
// runs and joins the runs that touch across rows (union-find on runs); (2) the runs are
// grouped by connected component of F; (3) each component is swept with the priority
// queue (or, with a single maximum, filled); (4) the objects are numbered along the
// runs. Background costs only pass 1. Data layout: `out` doubles as the state of every
// pixel, so the extra memory is the runs (20 bytes each), the largest component's pixel
// list and queue, and a small record per basin (measured figures in the Python
// docstring).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "nucseg/queues.hpp"

#if defined(__SSE2__) || defined(_M_X64)
#define NUCSEG_SSE2 1
#include <emmintrin.h>
#endif

namespace nucseg {

// The largest image watershed_dynamics takes: labels are int32 and the pixel states
// below need a few values beyond them. The Python wrapper uses this same constant
// (exported as nucseg._core.MAX_PIXELS).
constexpr std::int64_t kMaxPixels = std::numeric_limits<std::int32_t>::max() - 3;

// Thrown when the interrupt callback asks the sweep to stop (e.g. Ctrl-C).
struct Interrupted : std::exception {
    const char* what() const noexcept override { return "watershed_dynamics interrupted"; }
};

namespace detail {

// States of a pixel in `out` while the sweep runs. Basin ids are 1..kMaxBasins; a
// watershed line pixel is stored as its label's id with bit kLine set (lines still
// propagate the flood, so nothing behind a line is left unreached and dynamics stay
// exact). 0 is background; the other states are negative. So a flooded pixel's basin
// is one mask away: max(s, 0) & kIdMask, no branch (see the sweep).
constexpr std::int32_t kQueued = std::numeric_limits<std::int32_t>::min();  // pushed, not yet flooded
constexpr std::int32_t kMaybeMax = kQueued + 1;  // no strictly higher neighbour (pass 1); then a maximum plateau
constexpr std::int32_t kNotMax = kQueued + 2;    // not on a maximum plateau
constexpr std::int32_t kLine = std::int32_t{1} << 30;
constexpr std::int32_t kIdMask = kLine - 1;
constexpr std::int32_t kMaxBasins = kIdMask;

enum Status : std::uint8_t { kTop = 0, kMarker = 1, kNonMarker = 2 };

inline bool is_line(std::int32_t s) { return s >= kLine; }

// A hint to fetch the cache line at p (no effect where unsupported).
inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p);
#else
    (void)p;
#endif
}

// The basin of a flooded pixel (labelled or line), 0 for any other state; bit
// operations only, because whether a neighbour is flooded is unpredictable.
inline std::int32_t basin_of(std::int32_t s) { return (s & ~(s >> 31)) & kIdMask; }

// Row of a pixel index without an integer division (the hot loop's main cost
// otherwise): a float reciprocal, corrected to be exact for any index < 2^31.
struct RowOf {
    std::ptrdiff_t width;
    double inverse;
    explicit RowOf(std::ptrdiff_t w) : width(w), inverse(1.0 / static_cast<double>(w)) {}
    std::ptrdiff_t operator()(std::ptrdiff_t i) const {
        auto y = static_cast<std::ptrdiff_t>(static_cast<double>(i) * inverse);
        if (y * width > i) --y;
        else if ((y + 1) * width <= i) ++y;
        return y;
    }
};

// Neighbour offsets in raster order: (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1).
// The order fixes the push order and so the tie rule; the reference uses the same.
struct Neighbourhood {
    int count;
    int dy[8];
    int dx[8];
    std::ptrdiff_t offset[8];

    RowOf row_of;

    Neighbourhood(int connectivity, std::ptrdiff_t width) : count(0), row_of(width) {
        for (int y = -1; y <= 1; ++y)
            for (int x = -1; x <= 1; ++x) {
                if ((x == 0 && y == 0) || (connectivity == 1 && x != 0 && y != 0)) continue;
                dy[count] = y;
                dx[count] = x;
                offset[count] = y * width + x;
                ++count;
            }
    }
};

// Calls f(neighbour_index) for each in-bounds neighbour of pixel i, in order.
// Interior pixels skip the bounds test.
template <class Fn>
inline void for_neighbours(const Neighbourhood& nh, std::ptrdiff_t height,
                           std::ptrdiff_t width, std::ptrdiff_t i, Fn&& f) {
    const std::ptrdiff_t y = nh.row_of(i), x = i - y * width;
    if (y > 0 && x > 0 && y < height - 1 && x < width - 1) {
        for (int k = 0; k < nh.count; ++k) f(i + nh.offset[k]);
    } else {
        for (int k = 0; k < nh.count; ++k) {
            const std::ptrdiff_t yy = y + nh.dy[k], xx = x + nh.dx[k];
            if (yy >= 0 && yy < height && xx >= 0 && xx < width) f(i + nh.offset[k]);
        }
    }
}

// Throws std::invalid_argument unless t is a threshold T's maps can be cut at: within
// [0, max] for integer maps (so that floor(t) converts to T without overflow), finite
// for float maps.
template <class T>
void check_threshold(double t) {
    if constexpr (std::is_integral<T>::value) {
        if (!(t >= 0.0 && t <= static_cast<double>(std::numeric_limits<T>::max())))  // NaN fails too
            throw std::invalid_argument("watershed_dynamics: threshold must lie in [0, dtype max] for integer maps");
    } else if (!std::isfinite(t)) {
        throw std::invalid_argument("watershed_dynamics: threshold must be finite");
    }
}

// v > threshold, exactly, in T's own arithmetic: integer maps compare with the
// integer floor(t), float32 maps with the largest float <= t (for a float v, v > t
// exactly when v > that float), so the test vectorises. t is checked by check_threshold.
template <class T>
struct Foreground {
    T cut;
    explicit Foreground(double t) {
        if constexpr (std::is_integral<T>::value) {
            cut = static_cast<T>(std::floor(t));
        } else if (t >= static_cast<double>(std::numeric_limits<T>::max())) {
            cut = std::numeric_limits<T>::max();  // converting a larger t to T would be undefined; no finite v is > it
        } else if (t < -static_cast<double>(std::numeric_limits<T>::max())) {
            cut = -std::numeric_limits<T>::infinity();  // every finite v is > t
        } else {
            cut = static_cast<T>(t);
            if (static_cast<double>(cut) > t) cut = std::nextafter(cut, -std::numeric_limits<T>::infinity());
        }
    }
    bool operator()(T v) const { return v > cut; }
};

// Basin records: label union-find (watershed labels) and component union-find
// (flooded connectivity, for dynamics), with each component rooted at its leader,
// the basin of its highest peak.
struct Basins {
    std::vector<std::int32_t> label_parent, comp_parent;
    std::vector<double> peak;
    std::vector<std::uint8_t> status;

    std::int32_t add(double height) {
        const auto id = static_cast<std::int32_t>(peak.size());
        label_parent.push_back(id);
        comp_parent.push_back(id);
        peak.push_back(height);
        status.push_back(kTop);
        return id;
    }

    static std::int32_t find(std::vector<std::int32_t>& parent, std::int32_t b) {
        std::int32_t root = b;
        while (parent[root] != root) root = parent[root];
        while (parent[b] != root) {  // path compression
            const std::int32_t next = parent[b];
            parent[b] = root;
            b = next;
        }
        return root;
    }
    std::int32_t label_root(std::int32_t b) { return find(label_parent, b); }
    std::int32_t comp_root(std::int32_t b) { return find(comp_parent, b); }

    // Survivor of two components meeting: higher peak, then the older basin.
    bool outranks(std::int32_t a, std::int32_t b) const {
        return peak[a] > peak[b] || (peak[a] == peak[b] && a < b);
    }
};

// Whether x is among list[0..n) (n <= 8).
inline bool contains(const std::int32_t* list, int n, std::int32_t x) {
    bool found = false;
    for (int a = 0; a < n; ++a) found |= list[a] == x;
    return found;
}

// A pixel at `level` whose flooded neighbours carry more than one basin: merge the
// components that meet (fixing the dynamics of all but the highest-peaked one), then
// decide its label and whether it is a watershed line. Returns the value to store:
// the label's basin id, with kLine set for a line pixel. seen[0..k) are the states of
// the pixel's neighbours (basin_of 0: not flooded). Sets cut_risk when a label is
// given or joined here without a labelled (non-line) neighbour of it to connect through:
// only then can a piece of an object be cut off from its marker (see drop_stranded).
inline std::int32_t decide(Basins& basins, const std::int32_t* seen, int k, std::int32_t* roots, double level,
                           double lam, bool line, bool& cut_risk) {
    // 1. Components meeting here: all but the highest-peaked one get their dynamics now.
    int nc = 0;
    for (int a = 0; a < k; ++a) {
        const std::int32_t b = basin_of(seen[a]);
        if (b == 0) continue;
        const std::int32_t c = basins.comp_root(b);
        if (!contains(roots, nc, c)) roots[nc++] = c;
    }
    if (nc > 1) {
        std::int32_t top = roots[0];
        for (int a = 1; a < nc; ++a)
            if (basins.outranks(roots[a], top)) top = roots[a];
        for (int a = 0; a < nc; ++a) {
            const std::int32_t c = roots[a];
            if (c == top) continue;
            basins.status[c] = (basins.peak[c] - level > lam) ? kMarker : kNonMarker;
            basins.comp_parent[c] = top;
        }
    }

    // 2. Labels meeting here. A label is a marker when its dynamics is known to exceed
    // lam; a component leader whose peak is still within lam of the level is undecided
    // ("unknown"), and at most one of those can be here. Non-markers join the target:
    // the oldest marker among labelled neighbours, else among line neighbours, else the
    // unknown one, else the oldest label.
    int nl = 0, real_markers = 0, nr = 0;
    std::int32_t real_seen[8], real_roots[8];
    std::int32_t best_real = 0, best_line = 0, unknown = 0, oldest = 0;
    for (int a = 0; a < k; ++a) {
        const std::int32_t b = basin_of(seen[a]);
        if (b == 0) continue;
        const std::int32_t r = basins.label_root(b);
        if (!contains(roots, nl, r)) roots[nl++] = r;
        if (b == seen[a] && !contains(real_roots, nr, r)) real_roots[nr++] = r;
        const std::uint8_t st = basins.status[r];
        const bool marker = st == kMarker || (st == kTop && basins.peak[r] - level > lam);
        if (marker && b == seen[a]) {  // a labelled neighbour, not a line
            if (!contains(real_seen, real_markers, r)) real_seen[real_markers++] = r;
            if (best_real == 0 || r < best_real) best_real = r;
        } else if (marker) {
            if (best_line == 0 || r < best_line) best_line = r;
        } else if (st == kTop) {
            unknown = r;
        }
        if (oldest == 0 || r < oldest) oldest = r;
    }
    const std::int32_t target = best_real ? best_real : best_line ? best_line : unknown ? unknown : oldest;
    const bool is_line_here = line && real_markers >= 2;
    cut_risk |= !contains(real_roots, nr, target);
    for (int a = 0; a < nl; ++a)
        if (roots[a] != target && basins.status[roots[a]] == kNonMarker) {
            basins.label_parent[roots[a]] = target;
            cut_risk |= is_line_here || !contains(real_roots, nr, roots[a]);
        }
    return is_line_here ? (target | kLine) : target;
}

#if defined(NUCSEG_SSE2)
// classify_row's interior for uint8 maps, 16 pixels per step from x = 1 (the compiler's
// own vectorisation of the generic loop widens to int32 too early). Returns the first
// column it did not do.
template <bool kDiagonal>
std::ptrdiff_t classify_row_u8(const std::uint8_t* up, const std::uint8_t* row, const std::uint8_t* down,
                               std::ptrdiff_t width, std::uint8_t cut, std::int32_t* out) {
    std::ptrdiff_t x = 1;
    if (cut == 255) return x;  // no foreground: the generic loop
    const auto load = [](const std::uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); };
    const __m128i zero = _mm_setzero_si128(), one = _mm_set1_epi8(1);
    const __m128i lowest_fg = _mm_set1_epi8(static_cast<char>(cut + 1));
    const __m128i top_bit = _mm_set1_epi32(static_cast<int>(0x80000000u));
    for (; x + 16 <= width - 1; x += 16) {
        const __m128i t = load(row + x);
        __m128i h = _mm_max_epu8(_mm_max_epu8(load(up + x), load(down + x)), _mm_max_epu8(load(row + x - 1), load(row + x + 1)));
        if constexpr (kDiagonal)
            h = _mm_max_epu8(h, _mm_max_epu8(_mm_max_epu8(load(up + x - 1), load(up + x + 1)),
                                             _mm_max_epu8(load(down + x - 1), load(down + x + 1))));
        const __m128i fg = _mm_cmpeq_epi8(_mm_max_epu8(t, lowest_fg), t);            // t > cut
        const __m128i not_max = _mm_andnot_si128(_mm_cmpeq_epi8(_mm_subs_epu8(h, t), zero), fg);  // h > t
        // 0 background, 1 kMaybeMax, 2 kNotMax (their low bits), widened to int32 with
        // the top bit of the foreground.
        const __m128i code = _mm_add_epi8(_mm_and_si128(fg, one), _mm_and_si128(not_max, one));
        const __m128i code_lo = _mm_unpacklo_epi8(code, zero), code_hi = _mm_unpackhi_epi8(code, zero);
        const __m128i fg_lo = _mm_unpacklo_epi8(fg, fg), fg_hi = _mm_unpackhi_epi8(fg, fg);
        const __m128i c[4] = {_mm_unpacklo_epi16(code_lo, zero), _mm_unpackhi_epi16(code_lo, zero),
                              _mm_unpacklo_epi16(code_hi, zero), _mm_unpackhi_epi16(code_hi, zero)};
        const __m128i f[4] = {_mm_unpacklo_epi16(fg_lo, fg_lo), _mm_unpackhi_epi16(fg_lo, fg_lo),
                              _mm_unpacklo_epi16(fg_hi, fg_hi), _mm_unpackhi_epi16(fg_hi, fg_hi)};
        for (int k = 0; k < 4; ++k)
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + x + 4 * k), _mm_or_si128(c[k], _mm_and_si128(f[k], top_bit)));
    }
    return x;
}

// classify_row's interior for float32 maps, 4 pixels per step from x = 1, clearing
// `finite` if one of them is NaN or inf (x - x is 0 exactly for finite x). The
// compiler leaves the generic loop scalar. Returns the first column it did not do.
template <bool kDiagonal>
std::ptrdiff_t classify_row_f32(const float* up, const float* row, const float* down, std::ptrdiff_t width,
                                float cut, std::int32_t* out, bool& finite) {
    std::ptrdiff_t x = 1;
    const __m128 cut4 = _mm_set1_ps(cut), zero = _mm_setzero_ps();
    const __m128i one = _mm_set1_epi32(1), top_bit = _mm_set1_epi32(kQueued);
    __m128 ok = _mm_cmpeq_ps(zero, zero);
    for (; x + 4 <= width - 1; x += 4) {
        const __m128 t = _mm_loadu_ps(row + x);
        __m128 h = _mm_max_ps(_mm_max_ps(_mm_loadu_ps(up + x), _mm_loadu_ps(down + x)),
                              _mm_max_ps(_mm_loadu_ps(row + x - 1), _mm_loadu_ps(row + x + 1)));
        if constexpr (kDiagonal)
            h = _mm_max_ps(h, _mm_max_ps(_mm_max_ps(_mm_loadu_ps(up + x - 1), _mm_loadu_ps(up + x + 1)),
                                         _mm_max_ps(_mm_loadu_ps(down + x - 1), _mm_loadu_ps(down + x + 1))));
        ok = _mm_and_ps(ok, _mm_cmpeq_ps(_mm_sub_ps(t, t), zero));
        const __m128i fg = _mm_castps_si128(_mm_cmpgt_ps(t, cut4));
        const __m128i higher = _mm_and_si128(fg, _mm_castps_si128(_mm_cmpgt_ps(h, t)));
        // kMaybeMax = kQueued + 1, kNotMax = kQueued + 2, background 0.
        const __m128i code = _mm_add_epi32(_mm_and_si128(fg, one), _mm_and_si128(higher, one));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + x), _mm_or_si128(code, _mm_and_si128(fg, top_bit)));
    }
    finite &= _mm_movemask_ps(ok) == 0xF;
    return x;
}
#endif

// Pass 1, one row: 0 for background, kMaybeMax or kNotMax for a foreground pixel
// without or with a strictly higher neighbour (such a neighbour is in F too). `up`
// and `down` are the rows above and below, or `row` itself at the image's edge (a
// pixel is not higher than itself). Interior pixels take a branch-free loop that
// vectorises; the two end columns test their bounds. Returns whether the row is
// finite (float maps; always true for integer maps): checked here, with the row in
// cache, so that the map is read once.
template <class T, bool kDiagonal>
bool classify_row(const T* up, const T* row, const T* down, std::ptrdiff_t width, const Foreground<T>& in_f,
                  std::int32_t* out) {
    const auto mx = [](T a, T b) { return a > b ? a : b; };
    const auto state = [&](T t, T h) { return in_f(t) ? (h > t ? kNotMax : kMaybeMax) : 0; };
    const auto edge = [&](std::ptrdiff_t x) {
        const T t = row[x];
        const auto at = [&](const T* r, std::ptrdiff_t xx) { return xx < 0 || xx >= width ? t : r[xx]; };
        T h = mx(mx(up[x], down[x]), mx(at(row, x - 1), at(row, x + 1)));
        if constexpr (kDiagonal) h = mx(h, mx(mx(at(up, x - 1), at(up, x + 1)), mx(at(down, x - 1), at(down, x + 1))));
        out[x] = state(t, h);
    };
    edge(0);
    std::ptrdiff_t x = 1;
    bool finite = true;
#if defined(NUCSEG_SSE2)
    if constexpr (std::is_same<T, std::uint8_t>::value) x = classify_row_u8<kDiagonal>(up, row, down, width, in_f.cut, out);
    if constexpr (std::is_same<T, float>::value)
        x = classify_row_f32<kDiagonal>(up, row, down, width, in_f.cut, out, finite);
#endif
    // Columns 1..x-1 were checked finite by the vector loop (unused for integer maps).
    [[maybe_unused]] const std::ptrdiff_t unchecked = x;
    for (; x < width - 1; ++x) {
        const T t = row[x];
        T h = mx(mx(up[x], down[x]), mx(row[x - 1], row[x + 1]));
        if constexpr (kDiagonal) h = mx(h, mx(mx(up[x - 1], up[x + 1]), mx(down[x - 1], down[x + 1])));
        out[x] = state(t, h);
    }
    if (width > 1) edge(width - 1);
    if constexpr (!std::is_integral<T>::value) {
        // The columns the vector loop did not check (all for float64), in a loop that vectorises.
        int ok = static_cast<int>(row[0] - row[0] == T(0));
        for (std::ptrdiff_t c = unchecked; c < width; ++c) ok &= static_cast<int>(row[c] - row[c] == T(0));
        finite &= ok != 0;
    }
    return finite;
}

// A run: the foreground pixels start..start+length-1 of one row, maximal.
struct Run {
    std::uint32_t start, length, row;
};

// Bit k of the result: out[k] != 0, for k < count <= 32.
inline std::uint32_t nonzero_mask(const std::int32_t* out, int count) {
    std::uint32_t m = 0;
#if defined(NUCSEG_SSE2)
    if (count == 32) {
        const __m128i zero = _mm_setzero_si128();
        for (int k = 0; k < 32; k += 4) {
            const __m128i is_zero = _mm_cmpeq_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(out + k)), zero);
            m |= static_cast<std::uint32_t>(_mm_movemask_ps(_mm_castsi128_ps(is_zero))) << k;
        }
        return ~m;
    }
#endif
    for (int k = 0; k < count; ++k) m |= static_cast<std::uint32_t>(out[k] != 0) << k;
    return m;
}


// Appends the runs of one classified row (`out`, pixel `base` first) to `runs`,
// 32 pixels at a time: a bit mask of the foreground, read run by run.
inline void find_runs(const std::int32_t* out, std::ptrdiff_t base, std::ptrdiff_t width, std::uint32_t row,
                      std::vector<Run>& runs) {
    const std::int32_t* o = out + base;
    std::ptrdiff_t open = -1;  // first column of a run not yet ended
    for (std::ptrdiff_t x = 0; x < width; x += 32) {
        const int count = static_cast<int>(std::min<std::ptrdiff_t>(32, width - x));
        const std::uint32_t m = nonzero_mask(o + x, count);
        int at = 0;  // bits below `at` are read
        while (at < count) {
            if (open < 0) {
                const std::uint32_t ones = m >> at;
                if (ones == 0) break;
                at += trailing_zeros(ones);
                open = x + at;
            }
            const std::uint32_t zeros = ~m >> at;  // past `count` the bits of ~m are 1: a run ends there
            if (zeros == 0) break;                  // the run goes on into the next block
            at += trailing_zeros(zeros);
            runs.push_back({static_cast<std::uint32_t>(base + open), static_cast<std::uint32_t>(x + at - open), row});
            open = -1;
        }
    }
    if (open >= 0)
        runs.push_back({static_cast<std::uint32_t>(base + open), static_cast<std::uint32_t>(width - open), row});
}

// Union-find over runs, rooted at the lowest index (the component's first run in
// raster order).
inline std::uint32_t run_root(std::vector<std::uint32_t>& parent, std::uint32_t r) {
    while (parent[r] != r) {
        parent[r] = parent[parent[r]];  // path halving
        r = parent[r];
    }
    return r;
}

// Joins the runs of the last row (from `below` to the end of `runs`) that touch runs
// of the row above (from `above` to `below`); `reach` = 1 lets diagonal neighbours
// touch. A merge of the two sorted lists.
inline void join_rows(const std::vector<Run>& runs, std::uint32_t above, std::uint32_t below, std::uint32_t width,
                      std::uint32_t reach, std::vector<std::uint32_t>& parent) {
    const std::uint32_t above_end = below;
    const auto below_end = static_cast<std::uint32_t>(runs.size());
    while (above < above_end && below < below_end) {
        const Run& a = runs[above];
        const Run& b = runs[below];
        const std::uint32_t a0 = a.start - a.row * width, a1 = a0 + a.length - 1;
        const std::uint32_t b0 = b.start - b.row * width, b1 = b0 + b.length - 1;
        if (a1 + reach < b0) {
            ++above;
        } else if (b1 + reach < a0) {
            ++below;
        } else {
            const std::uint32_t ra = run_root(parent, above), rb = run_root(parent, below);
            if (ra < rb) parent[rb] = ra;
            else if (rb < ra) parent[ra] = rb;
            if (a1 < b1) ++above;
            else ++below;
        }
    }
}

// After the sweep of a component that made watershed lines: the flood crosses line
// pixels (so that dynamics stay exact), and a pixel reached only through lines takes
// the label they carry, which can cut a piece of an object off from its marker (about
// 1 object in 430 on a realistic map; such pieces are 1 to 6 pixels there). An object is
// what its marker reaches without crossing a line, as in scikit-image (whose lines stop
// the flood): every other pixel of its label becomes a line pixel, so each object is one
// connected piece. Labels are resolved to their roots here (pass 4 reads roots fine).
// `maxima` holds the pixels of the component's maximum plateaus; `stack` is scratch.
template <class Nh>
void drop_stranded(Basins& basins, const std::uint32_t* component, std::size_t size,
                   const std::vector<std::uint32_t>& maxima, const Nh& nh, std::ptrdiff_t height,
                   std::ptrdiff_t width, std::int32_t* out, std::vector<std::uint32_t>& stack) {
    // The plateau pixels of each object's own (root) basin start the search; they are
    // marked visited by negation (labels are positive, kQueued states are gone).
    stack.clear();
    for (const std::uint32_t m : maxima)
        if (basins.label_root(out[m]) == out[m]) stack.push_back(m);
    std::int32_t last_basin = 0, last_root = 0;
    for (std::size_t i = 0; i < size; ++i) {
        const std::int32_t s = out[component[i]];
        const std::int32_t b = s & kIdMask;
        if (b != last_basin) last_basin = b, last_root = basins.label_root(b);
        out[component[i]] = last_root | (s & kLine);
    }
    for (const std::uint32_t m : stack) out[m] = -out[m];
    while (!stack.empty()) {
        const std::ptrdiff_t p = stack.back();
        stack.pop_back();
        const std::int32_t label = -out[p];
        for_neighbours(nh, height, width, p, [&](std::ptrdiff_t j) {
            if (out[j] == label) {
                out[j] = -label;
                stack.push_back(static_cast<std::uint32_t>(j));
            }
        });
    }
    for (std::size_t i = 0; i < size; ++i) {
        std::int32_t& s = out[component[i]];
        s = s < 0 ? -s : (s | kLine);  // unreached: a stranded piece, or a line already
    }
}

// Pass 1: classifies every pixel (this also initialises `out`), finds the runs of
// foreground row by row and joins the touching ones into connected components
// (`parent`, a union-find over runs). Float maps are checked to be finite on the way.
template <class T, class Interrupt>
void classify_and_join(const T* v, std::ptrdiff_t height, std::ptrdiff_t width, const Foreground<T>& in_f,
                       const Neighbourhood& nh, std::int32_t* out, std::vector<Run>& runs,
                       std::vector<std::uint32_t>& parent, std::uint64_t& work, Interrupt& interrupted) {
    const std::uint32_t reach = nh.count == 8 ? 1 : 0;
    // Room for a realistic map's runs (a few per hundred pixels) and then some, so the
    // vectors rarely grow: pages never written are never resident (capped, as Windows
    // commits what is reserved).
    runs.reserve(std::min<std::size_t>(static_cast<std::size_t>(height * width / 8 + height), std::size_t{1} << 24));
    parent.reserve(runs.capacity());
    std::uint32_t row_begin = 0, previous_begin = 0;
    for (std::ptrdiff_t y = 0; y < height; ++y) {
        const T* row = v + y * width;
        const T* up = y > 0 ? row - width : row;
        const T* down = y < height - 1 ? row + width : row;
        const bool finite = nh.count == 8 ? classify_row<T, true>(up, row, down, width, in_f, out + y * width)
                                          : classify_row<T, false>(up, row, down, width, in_f, out + y * width);
        // NaN would be background but poison the comparisons of the sweep; inf has no dynamics.
        if (!finite) throw std::invalid_argument("watershed_dynamics: prob must be finite (NaN or inf found)");
        previous_begin = row_begin;
        row_begin = static_cast<std::uint32_t>(runs.size());
        find_runs(out, y * width, width, static_cast<std::uint32_t>(y), runs);
        for (auto r = static_cast<std::uint32_t>(parent.size()); r < runs.size(); ++r) parent.push_back(r);
        join_rows(runs, previous_begin, row_begin, static_cast<std::uint32_t>(width), reach, parent);
        work += static_cast<std::uint64_t>(width);
        if (work >= 0x40000) {
            work = 0;
            if (interrupted()) throw Interrupted();
        }
    }
}

// Pass 2: the runs of each component, components in raster order of their first
// pixel, runs in raster order (a counting sort on the roots; parent[r] <= r, so one
// increasing pass resolves every root). `parent` is reused in place.
inline void group_by_component(std::vector<std::uint32_t>& parent, std::vector<std::uint32_t>& by_component,
                               std::vector<std::uint32_t>& component_end) {
    by_component.resize(parent.size());
    std::vector<std::uint32_t>& id = parent;  // root -> component id, in place
    std::uint32_t components = 0;
    for (std::uint32_t r = 0; r < parent.size(); ++r) id[r] = parent[r] == r ? components++ : id[parent[r]];
    component_end.assign(components, 0);
    for (std::uint32_t r = 0; r < parent.size(); ++r) ++component_end[id[r]];
    std::uint32_t total = 0;
    for (auto& e : component_end) total += e, e = total - e;  // first run of each component
    for (std::uint32_t r = 0; r < parent.size(); ++r) by_component[component_end[id[r]]++] = r;
}

// Gives `state` to the candidate-maximum plateau of pixel m (equal values, depth-first).
template <class T>
void fill_plateau(const T* v, const Neighbourhood& nh, std::ptrdiff_t height, std::ptrdiff_t width,
                  std::int32_t* out, std::vector<std::uint32_t>& stack, std::uint32_t m, std::int32_t state) {
    out[m] = state;
    stack.push_back(m);
    while (!stack.empty()) {
        const std::ptrdiff_t p = stack.back();
        stack.pop_back();
        for_neighbours(nh, height, width, p, [&](std::ptrdiff_t j) {
            if (out[j] == kMaybeMax && v[j] == v[m]) {
                out[j] = state;
                stack.push_back(static_cast<std::uint32_t>(j));
            }
        });
    }
}

// The pixels of one component (its runs by_component[begin..end)) into `component`,
// raster order, and its candidate maxima into `maxima`. Returns the pixel count; sets
// `interior` when no pixel is on the image border (the sweep then skips bounds tests).
template <class T>
std::size_t gather_component(const T* v, std::ptrdiff_t height, std::ptrdiff_t width, const std::int32_t* out,
                             const std::vector<Run>& runs, const std::vector<std::uint32_t>& by_component,
                             std::uint32_t begin, std::uint32_t end, std::vector<std::uint32_t>& component,
                             std::vector<std::uint32_t>& maxima, bool& interior) {
    maxima.clear();
    std::size_t size = 0;
    for (std::uint32_t c = begin; c < end; ++c) size += runs[by_component[c]].length;
    if (component.size() < size) component.resize(std::max(size, 2 * component.size()));  // a buffer: only grows
    std::uint32_t* list = component.data();
    interior = true;
    for (std::uint32_t c = begin; c < end; ++c) {
        if (c + 4 < runs.size()) {  // runs are far apart in memory: fetch ahead
            const Run& ahead = runs[by_component[c + 4]];
            prefetch(out + ahead.start);
            prefetch(v + ahead.start);
        }
        const Run& r = runs[by_component[c]];
        const std::uint32_t x = r.start - r.row * static_cast<std::uint32_t>(width);
        interior &= r.row > 0 && r.row < height - 1 && x > 0 && x + r.length < width;
        for (std::uint32_t i = r.start; i < r.start + r.length; ++i) {
            *list++ = i;
            if (out[i] == kMaybeMax) maxima.push_back(i);  // rare
        }
    }
    return size;
}

// Keeps the true maxima among the candidates (a candidate on a plateau that also holds
// a non-maximum pixel is none) and numbers their plateaus as new basins, in raster
// order of their first pixel.
template <class T>
void number_maxima(const T* v, const Neighbourhood& nh, std::ptrdiff_t height, std::ptrdiff_t width,
                   std::int32_t* out, std::vector<std::uint32_t>& maxima, Basins& basins,
                   std::vector<std::uint32_t>& stack) {
    for (const std::uint32_t m : maxima) {
        if (out[m] != kMaybeMax) continue;
        bool beside_non_max = false;
        for_neighbours(nh, height, width, m,
                       [&](std::ptrdiff_t j) { beside_non_max |= out[j] == kNotMax && v[j] == v[m]; });
        if (beside_non_max) fill_plateau(v, nh, height, width, out, stack, m, kNotMax);
    }
    maxima.erase(std::remove_if(maxima.begin(), maxima.end(), [&](std::uint32_t m) { return out[m] != kMaybeMax; }),
                 maxima.end());
    std::sort(maxima.begin(), maxima.end());
    for (const std::uint32_t m : maxima) {
        if (out[m] == kMaybeMax) {
            if (basins.peak.size() > static_cast<std::size_t>(kMaxBasins))
                throw std::length_error("watershed_dynamics: more than 2^30 - 1 regional maxima");
            fill_plateau(v, nh, height, width, out, stack, m, basins.add(static_cast<double>(v[m])));
        }
    }
}

// Pass 3 for one component with several maxima: floods it from its maxima (already
// pushed), deciding each pixel's label and line. Returns whether a piece of an object
// may have been cut off from its marker by lines (see drop_stranded).
template <class T, class Queue, class Interrupt>
bool sweep_component(const T* v, std::ptrdiff_t height, std::ptrdiff_t width, const Neighbourhood& nh, double lam,
                     bool line, std::int32_t* out, Queue& queue, Basins& basins, std::size_t size, bool interior,
                     std::uint64_t& work, Interrupt& interrupted) {
    std::int32_t seen[8];  // the states of the pixel's neighbours
    std::int32_t roots[8];
    bool cut_risk = false;
    // The sweep, compiled six ways: with or without pushes (a sorted queue without
    // tied keys already knows its pop order), with or without bounds tests (and
    // then for 4 or 8 neighbours, so the neighbour loop unrolls).
    const auto sweep = [&](auto pushes, auto inside) {
        const auto step = [&](std::ptrdiff_t p) {
            if ((++work & 0x3FFFF) == 0 && interrupted()) throw Interrupted();
            const bool seed = out[p] > 0;
            int k = 0;  // neighbours seen
            // Branch-free bookkeeping of the flooded neighbours (which of them are
            // flooded is unpredictable): the highest and lowest basin among them.
            // And whether one is labelled, not a line: the least of s - 1 over them
            // is below kLine - 1 exactly then (0 and the negative states wrap high).
            std::uint32_t hi = 0, lo = ~0u, labelled = ~0u;
            const auto note = [&](std::int32_t s) {
                const std::int32_t b = basin_of(s);
                seen[k++] = s;
                hi = std::max(hi, static_cast<std::uint32_t>(b));
                lo = std::min(lo, static_cast<std::uint32_t>(b) - 1u);  // 0 wraps to the top
                labelled = std::min(labelled, static_cast<std::uint32_t>(s) - 1u);
            };
            const auto visit = [&](std::ptrdiff_t j) {
                const std::int32_t s = out[j];
                if constexpr (decltype(pushes)::value) {
                    if (s == kNotMax) {
                        out[j] = kQueued;
                        queue.push(v[j], static_cast<std::uint32_t>(j));
                    }
                }
                note(s);
            };
            if constexpr (decltype(inside)::value != 0 && decltype(pushes)::value) {
                // The neighbours not yet queued as a bit mask first, then one loop over
                // its bits (in neighbour order): fewer unpredictable branches.
                unsigned fresh = 0;
                for (int a = 0; a < decltype(inside)::value; ++a) {
                    const std::int32_t s = out[p + nh.offset[a]];
                    fresh |= static_cast<unsigned>(s == kNotMax) << a;
                    note(s);
                }
                for (; fresh != 0; fresh &= fresh - 1) {
                    const std::ptrdiff_t j = p + nh.offset[trailing_zeros(fresh)];
                    out[j] = kQueued;
                    queue.push(v[j], static_cast<std::uint32_t>(j));
                }
            } else if constexpr (decltype(inside)::value != 0) {
                for (int a = 0; a < decltype(inside)::value; ++a) visit(p + nh.offset[a]);
            } else {
                for_neighbours(nh, height, width, p, visit);
            }
            if (seed) return;  // a maximum plateau pixel: already labelled, nothing meets here

            // Fast path (most pixels): every flooded neighbour carries the same basin, so
            // no components or labels meet and the pixel cannot be a line. (There is
            // at least one: a pixel is pushed by, or sorted after, a flooded neighbour.)
            if (lo + 1u == hi) {
                out[p] = basins.label_parent[hi];
                cut_risk |= labelled >= static_cast<std::uint32_t>(kLine - 1);  // reached through lines only
            } else {
                out[p] = decide(basins, seen, k, roots, static_cast<double>(v[p]), lam, line, cut_risk);
            }
        };
        if constexpr (decltype(pushes)::value) {
            while (!queue.empty()) step(queue.pop());
        } else {
            const std::uint32_t* order = queue.order();
            for (std::size_t i = 0; i < size; ++i) step(order[i]);
        }
    };
    // `inside`: the neighbour count when no bounds test is needed, else 0.
    const auto sweep_inside = [&](auto pushes) {
        if (!interior) sweep(pushes, std::integral_constant<int, 0>{});
        else if (nh.count == 4) sweep(pushes, std::integral_constant<int, 4>{});
        else sweep(pushes, std::integral_constant<int, 8>{});
    };
    if constexpr (Queue::kCanSkipPushes) {
        if (queue.needs_pushes()) sweep_inside(std::true_type{});
        else sweep_inside(std::false_type{});
    } else {
        sweep_inside(std::true_type{});
    }
    return cut_risk;
}

// Pass 4: final labels 1..N in raster order of each object's first pixel; background
// and watershed lines are 0.
inline void number_objects(const std::vector<Run>& runs, Basins& basins, std::int32_t* out) {
    std::vector<std::int32_t> final_id(basins.peak.size(), 0);
    std::int32_t next = 0, last_basin = 0, last_id = 0;
    for (std::size_t c = 0; c < runs.size(); ++c) {  // raster order; background is 0 already
        if (c + 8 < runs.size()) prefetch(out + runs[c + 8].start);
        const Run& r = runs[c];
        for (std::uint32_t i = r.start; i < r.start + r.length; ++i) {
            const std::int32_t s = out[i];
            if (is_line(s)) {
                out[i] = 0;
            } else if (s == last_basin) {
                out[i] = last_id;
            } else {
                const std::int32_t root = basins.label_root(s);
                if (final_id[root] == 0) final_id[root] = ++next;
                last_basin = s;
                last_id = out[i] = final_id[root];
            }
        }
    }
}

// Passes 1 to 4; the sweep runs one connected component of F at a time. Components never
// interact, and restricting the sweep to one keeps every access inside a small
// neighbourhood of memory (a global sweep visits pixels level by level all over the
// image and is bound by cache misses). The result is the same as one global sweep:
// within a component the order of pushes, the order of basin ids (raster order of
// each plateau's first pixel) and so every tie decision are unchanged.
template <class T, class Interrupt>
void flood(const T* v, std::ptrdiff_t height, std::ptrdiff_t width, const Foreground<T>& in_f,
           const Neighbourhood& nh, double lam, bool line, std::int32_t* out, Interrupt&& interrupted) {
    std::uint64_t work = 0;  // pixels handled, to poll for interrupts
    std::vector<Run> runs;
    std::vector<std::uint32_t> parent, by_component, component_end;
    classify_and_join(v, height, width, in_f, nh, out, runs, parent, work, interrupted);
    group_by_component(parent, by_component, component_end);

    Basins basins;
    basins.add(0.0);  // id 0 is unused: labels are > 0
    std::vector<std::uint32_t> component, maxima, stack;
    ByteQueue bytes;         // 8-bit maps
    BucketQueue<T> buckets;  // quantised components of 16-bit and float maps
    SortedQueue<T> sorted;   // their other components
    // Pushes every plateau pixel in raster order, so seeds are the oldest items, and floods.
    const auto sweep = [&](auto& queue, std::size_t size, bool interior) {
        for (const std::uint32_t m : maxima) queue.push(v[m], m);
        if (sweep_component(v, height, width, nh, lam, line, out, queue, basins, size, interior, work, interrupted))
            drop_stranded(basins, component.data(), size, maxima, nh, height, width, out, stack);
    };
    std::uint32_t begin = 0;
    for (const std::uint32_t end : component_end) {
        bool interior = false;
        const std::size_t size =
            gather_component(v, height, width, out, runs, by_component, begin, end, component, maxima, interior);
        begin = end;
        const std::size_t first_basin = basins.peak.size();
        number_maxima(v, nh, height, width, out, maxima, basins, stack);
        // One maximum (an isolated nucleus): its basin floods the whole component, no
        // line can form, and the sweep would only confirm it.
        if (basins.peak.size() == first_basin + 1) {
            for (std::size_t i = 0; i < size; ++i) out[component[i]] = static_cast<std::int32_t>(first_basin);
            continue;
        }
        if constexpr (sizeof(T) == 1) {
            bytes.reset(v, component.data(), size);
            sweep(bytes, size, interior);
        } else if (buckets.reset(v, component.data(), size)) {
            sweep(buckets, size, interior);
        } else {
            sorted.reset(v, component.data(), size);
            sweep(sorted, size, interior);
        }
    }
    number_objects(runs, basins, out);
}

}  // namespace detail

// Segment a 2-D nucleus probability map (C-contiguous, row-major) into `out`
// (int32, same shape). T is uint8_t, uint16_t, float or double. Preconditions, checked
// here (std::invalid_argument; std::length_error for the size) although the Python
// wrapper validates first with friendlier messages: 1 <= height * width <= kMaxPixels,
// connectivity 1 or 2, lam >= 0 (+inf allowed: one object per component, NaN refused),
// threshold in [0, max] for integer maps and finite for float maps, float values
// finite (NaN or inf anywhere throws; `out` is then partly written).
// `interrupted()` is polled every 2^18 pixels; returning true aborts with Interrupted.
template <class T, class Interrupt>
void watershed_dynamics(const T* prob, std::ptrdiff_t height, std::ptrdiff_t width, double threshold,
                        double lam, int connectivity, bool watershed_line, std::int32_t* out,
                        Interrupt&& interrupted) {
    if (height <= 0 || width <= 0) throw std::invalid_argument("watershed_dynamics: empty image");
    if (connectivity != 1 && connectivity != 2)
        throw std::invalid_argument("watershed_dynamics: connectivity must be 1 or 2");
    if (!(lam >= 0)) throw std::invalid_argument("watershed_dynamics: lam must be >= 0 (not NaN)");
    // Each side first, so that the product cannot overflow.
    if (height > kMaxPixels || width > kMaxPixels || height * width > kMaxPixels)
        throw std::length_error("watershed_dynamics: image too large for int32 labels");
    detail::check_threshold<T>(threshold);

    const detail::Foreground<T> in_f(threshold);
    const detail::Neighbourhood nh(connectivity, width);
    detail::flood(prob, height, width, in_f, nh, lam, watershed_line, out, interrupted);
}

}  // namespace nucseg
