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
// Data layout: the sweep runs on a padded grid (one background pixel around the image,
// so neighbour loops need no bounds tests) of order-preserving integer keys, one per
// pixel (sizeof(T) bytes, the extra memory), and `out` holds the padded grid of pixel
// states, so it must have buffer_size(height, width) entries; the labels end up in its
// first height * width. Per component: its pixel list and queue; per basin: a record.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "nucseg/queues.hpp"

namespace nucseg {

// Thrown when the interrupt callback asks the sweep to stop (e.g. Ctrl-C).
struct Interrupted : std::exception {
    const char* what() const noexcept override { return "watershed_dynamics interrupted"; }
};

namespace detail {

// States of a pixel in `out` while the sweep runs. Basin ids are > 0; a watershed
// line pixel is stored as -id of the label it carries (lines still propagate the
// flood, so nothing behind a line is left unreached and dynamics stay exact).
// 0 is background. Foreground pixels start "fresh", already sorted into candidate
// maxima (no strictly higher neighbour) and the rest; gathering a component makes
// them "seen" (fresh - 2).
constexpr std::int32_t kQueued = std::numeric_limits<std::int32_t>::min();  // pushed, not yet flooded
constexpr std::int32_t kSeenMax = kQueued + 1;      // gathered, on a regional-maximum plateau
constexpr std::int32_t kSeenNotMax = kQueued + 2;   // gathered, not on a maximum plateau
constexpr std::int32_t kFreshMax = kQueued + 3;     // not gathered, no strictly higher neighbour
constexpr std::int32_t kFreshNotMax = kQueued + 4;  // not gathered, a strictly higher neighbour
constexpr std::int32_t kMaxBasins = std::numeric_limits<std::int32_t>::max() - 5;

enum Status : std::uint8_t { kTop = 0, kMarker = 1, kNonMarker = 2 };

inline bool is_line(std::int32_t s) { return s < 0 && s > kFreshNotMax; }
inline bool is_fresh(std::int32_t s) {  // kFreshMax or kFreshNotMax, in one unsigned comparison
    return static_cast<std::uint32_t>(s) - static_cast<std::uint32_t>(kFreshMax) <= 1u;
}

// Neighbour offsets in raster order: (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1),
// on the padded grid (one background pixel around the image, so no bounds tests). The
// order fixes the push order and so the tie rule; the reference uses the same.
template <int N>
struct Neighbourhood {
    static_assert(N == 4 || N == 8, "4- or 8-connectivity");
    std::ptrdiff_t offset[N];

    explicit Neighbourhood(std::ptrdiff_t stride) {
        int count = 0;
        for (int y = -1; y <= 1; ++y)
            for (int x = -1; x <= 1; ++x) {
                if ((x == 0 && y == 0) || (N == 4 && x != 0 && y != 0)) continue;
                offset[count++] = y * stride + x;
            }
    }
};

// v > threshold, exactly, for every supported dtype, as one comparison in the map's
// own type (so that it vectorises): integer maps cut at floor(threshold) (validated to
// lie in the dtype's range), float32 at the largest float <= threshold.
template <class T>
struct Foreground {
    T cut;
    explicit Foreground(double t) {
        if constexpr (std::is_integral<T>::value) {
            cut = static_cast<T>(std::floor(t));
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

// A pixel at `level` whose flooded neighbours carry more than one basin: merge the
// components that meet (fixing the dynamics of all but the highest-peaked one), then
// decide its label and whether it is a watershed line. Returns the value to store:
// the label's basin id, negated for a line pixel.
template <class Seen>
std::int32_t decide(Basins& basins, const Seen* seen, int k, std::int32_t* roots, double level, double lam,
                    bool line) {
    // 1. Components meeting here: all but the highest-peaked one get their dynamics now.
    int nc = 0;
    for (int a = 0; a < k; ++a) {
        const std::int32_t c = basins.comp_root(seen[a].basin);
        if (std::find(roots, roots + nc, c) == roots + nc) roots[nc++] = c;
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
    int nl = 0, real_markers = 0;
    std::int32_t real_seen[8];
    std::int32_t best_real = 0, best_line = 0, unknown = 0, oldest = 0;
    for (int a = 0; a < k; ++a) {
        const std::int32_t r = basins.label_root(seen[a].basin);
        if (std::find(roots, roots + nl, r) == roots + nl) roots[nl++] = r;
        const std::uint8_t st = basins.status[r];
        const bool marker = st == kMarker || (st == kTop && basins.peak[r] - level > lam);
        if (marker && seen[a].real) {
            if (std::find(real_seen, real_seen + real_markers, r) == real_seen + real_markers)
                real_seen[real_markers++] = r;
            if (best_real == 0 || r < best_real) best_real = r;
        } else if (marker) {
            if (best_line == 0 || r < best_line) best_line = r;
        } else if (st == kTop) {
            unknown = r;
        }
        if (oldest == 0 || r < oldest) oldest = r;
    }
    const std::int32_t target = best_real ? best_real : best_line ? best_line : unknown ? unknown : oldest;
    for (int a = 0; a < nl; ++a)
        if (roots[a] != target && basins.status[roots[a]] == kNonMarker) basins.label_parent[roots[a]] = target;
    return (line && real_markers >= 2) ? -target : target;
}

// Row stride of the padded grid: width + 2 (a background pixel each side), and for
// wide images rounded up to an odd number of 64-byte lines of int32 states. A stride
// near a multiple of 4 KB maps a column of pixels in successive rows to one cache set,
// and a nucleus spanning a few dozen rows then no longer fits in L1 (measured: the
// sweep ran ~1.5x slower on 2048-wide maps without this).
inline std::ptrdiff_t padded_stride(std::ptrdiff_t width) {
    const std::ptrdiff_t stride = width + 2;
    if (stride < 256) return stride;
    std::ptrdiff_t lines = (stride + 15) / 16;
    return 16 * (lines | 1);
}

// Pass 1: the keys of the padded grid, background (and the one-pixel border) set to
// the background key, so that the sweep needs no bounds or threshold tests.
template <class T>
void fill_keys(const T* v, std::ptrdiff_t height, std::ptrdiff_t width, const Foreground<T>& in_f,
               typename KeyOf<T>::Key* keys) {
    using Key = typename KeyOf<T>::Key;
    constexpr Key bg = KeyOf<T>::background;
    const std::ptrdiff_t stride = padded_stride(width);
    std::fill(keys, keys + stride + 1, bg);
    for (std::ptrdiff_t y = 0; y < height; ++y) {
        const T* src = v + y * width;
        Key* dst = keys + (y + 1) * stride + 1;
        for (std::ptrdiff_t x = 0; x < width; ++x) dst[x] = in_f(src[x]) ? KeyOf<T>::of(src[x]) : bg;
        std::fill(dst + width, dst + stride, bg);  // right border and padding, next row's left border
    }
    std::fill(keys + (height + 1) * stride + 1, keys + (height + 2) * stride, bg);
}

// Pass 2: the initial state of every pixel of the padded grid: 0 for background,
// kFreshMax or kFreshNotMax for foreground (a strictly higher neighbour is in F).
template <class Key, int N>
void classify(const Key* keys, std::ptrdiff_t height, std::ptrdiff_t width, std::int32_t* state) {
    constexpr Key bg = std::numeric_limits<Key>::max();
    const std::ptrdiff_t stride = padded_stride(width);
    std::fill(state, state + stride, 0);
    for (std::ptrdiff_t y = 1; y <= height; ++y) {
        const Key* k = keys + y * stride;
        std::int32_t* s = state + y * stride;
        const Key* up = k - stride;
        const Key* down = k + stride;
        s[0] = 0;
        std::fill(s + width + 1, s + stride, 0);
        for (std::ptrdiff_t x = 1; x <= width; ++x) {
            const Key c = k[x];
            bool higher = (up[x] < c) | (k[x - 1] < c) | (k[x + 1] < c) | (down[x] < c);
            if constexpr (N == 8) higher |= (up[x - 1] < c) | (up[x + 1] < c) | (down[x - 1] < c) | (down[x + 1] < c);
            s[x] = c == bg ? 0 : higher ? kFreshNotMax : kFreshMax;
        }
    }
    std::fill(state + (height + 1) * stride, state + (height + 2) * stride, 0);
}

// First pixel at or after i not yet gathered (or end). Blocks of background are
// skipped with one vectorisable test on the keys.
template <class Key>
std::ptrdiff_t next_start(const Key* keys, const std::int32_t* state, std::ptrdiff_t i, std::ptrdiff_t end) {
    constexpr Key bg = std::numeric_limits<Key>::max();
    constexpr std::ptrdiff_t block = 64 / sizeof(Key);
    auto fresh = [&](std::ptrdiff_t j) { return is_fresh(state[j]); };
    while (i + block <= end) {
        Key all = bg;  // AND of the block's keys: all ones only when all are background
        for (std::ptrdiff_t k = 0; k < block; ++k) all &= keys[i + k];
        if (all != bg)
            for (std::ptrdiff_t k = 0; k < block; ++k)
                if (fresh(i + k)) return i + k;
        i += block;
    }
    for (; i < end; ++i)
        if (fresh(i)) return i;
    return end;
}

// Passes 3 and 4, one connected component of F at a time. Components never
// interact, and restricting the sweep to one keeps every access inside a small
// neighbourhood of memory (a global sweep visits pixels level by level all over the
// image and is bound by cache misses). The result is the same as one global sweep:
// within a component the order of pushes, the order of basin ids (raster order of
// each plateau's first pixel) and so every tie decision are unchanged.
// `state` is the padded grid as classify() left it; on return it holds basin ids, and
// -id for line pixels.
template <class T, int N, class Interrupt>
void flood(const typename KeyOf<T>::Key* keys, std::ptrdiff_t height, std::ptrdiff_t width, double lam, bool line,
           std::int32_t* state, Basins& basins, Interrupt&& interrupted) {
    using Key = typename KeyOf<T>::Key;
    const std::ptrdiff_t stride = padded_stride(width);
    const Neighbourhood<N> nh(stride);
    FloodQueue<Key> queue;
    std::vector<std::uint32_t> component(1024), maxima, stack;
    std::uint64_t work = 0;  // pixels flooded, to poll for interrupts

    struct Seen {
        std::int32_t basin;
        bool real;  // a labelled pixel, not a watershed line
    };
    Seen seen[8];
    std::int32_t roots[8];

    // Give `to` to the plateau of pixel m (equal keys, state `from`, depth-first).
    auto relabel_plateau = [&](std::uint32_t m, std::int32_t from, std::int32_t to) {
        state[m] = to;
        stack.push_back(m);
        while (!stack.empty()) {
            const std::ptrdiff_t p = stack.back();
            stack.pop_back();
            for (const std::ptrdiff_t o : nh.offset) {
                const std::ptrdiff_t j = p + o;
                if (state[j] == from && keys[j] == keys[m]) {
                    state[j] = to;
                    stack.push_back(static_cast<std::uint32_t>(j));
                }
            }
        }
    };

    const std::ptrdiff_t end = (height + 1) * stride;
    for (std::ptrdiff_t start = next_start(keys, state, stride, end); start < end;
         start = next_start(keys, state, start + 1, end)) {
        // Gather the component (breadth-first). Branch-free inner loop: a neighbour's
        // fate is unpredictable, so each one is written to the list and kept (size
        // advanced) only when it is fresh.
        maxima.clear();
        state[start] -= 2;
        component[0] = static_cast<std::uint32_t>(start);
        std::size_t size = 1;
        Key lo = keys[start], hi = keys[start];
        for (std::size_t h = 0; h < size; ++h) {
            if (size + N > component.size()) component.resize(2 * component.size());
            std::uint32_t* list = component.data();
            const std::ptrdiff_t p = list[h];
            lo = std::min(lo, keys[p]);
            hi = std::max(hi, keys[p]);
            for (const std::ptrdiff_t o : nh.offset) {
                const std::ptrdiff_t j = p + o;
                const std::int32_t s = state[j];
                const bool fresh = is_fresh(s);
                state[j] = fresh ? s - 2 : s;
                list[size] = static_cast<std::uint32_t>(j);
                size += fresh;
            }
            if (state[p] == kSeenMax) maxima.push_back(static_cast<std::uint32_t>(p));
        }
        component.resize(size);
        // A candidate on a plateau that also holds a non-maximum pixel is no maximum:
        // demote its whole plateau.
        for (const std::uint32_t m : maxima) {
            if (state[m] != kSeenMax) continue;
            bool beside_non_max = false;
            for (const std::ptrdiff_t o : nh.offset)
                beside_non_max |= state[m + o] == kSeenNotMax && keys[m + o] == keys[m];
            if (beside_non_max) relabel_plateau(m, kSeenMax, kSeenNotMax);
        }
        maxima.erase(std::remove_if(maxima.begin(), maxima.end(), [&](std::uint32_t m) { return state[m] != kSeenMax; }),
                     maxima.end());
        queue.reset(keys, component, lo, hi);
        component.resize(std::max<std::size_t>(component.capacity(), 1024));

        // Number the maximum plateaus in raster order of their first pixel and push
        // every plateau pixel in raster order, so seeds are the oldest items.
        std::sort(maxima.begin(), maxima.end());
        for (const std::uint32_t m : maxima) {
            if (state[m] == kSeenMax) {
                if (basins.peak.size() > static_cast<std::size_t>(kMaxBasins))
                    throw std::length_error("watershed_dynamics: too many regional maxima for int32 labels");
                relabel_plateau(m, kSeenMax, basins.add(KeyOf<T>::value(keys[m])));
            }
            queue.push(keys[m], m);
        }

        // The sweep.
        while (!queue.empty()) {
            const std::ptrdiff_t p = queue.pop();
            if ((++work & 0x3FFFF) == 0 && interrupted()) throw Interrupted();
            if (state[p] > 0) {  // a maximum plateau pixel: already labelled, nothing meets here
                for (const std::ptrdiff_t o : nh.offset) {
                    const std::ptrdiff_t j = p + o;
                    if (state[j] == kSeenNotMax) {
                        state[j] = kQueued;
                        queue.push(keys[j], static_cast<std::uint32_t>(j));
                    }
                }
                continue;
            }
            // Fast path (most pixels): every flooded neighbour carries the same basin, so
            // no components or labels meet and the pixel cannot be a line.
            std::int32_t first = 0;
            bool single = true;
            for (const std::ptrdiff_t o : nh.offset) {
                const std::ptrdiff_t j = p + o;
                const std::int32_t s = state[j];
                const bool take = s == kSeenNotMax;
                state[j] = take ? kQueued : s;
                queue.push_if(take, keys[j], static_cast<std::uint32_t>(j));
                // The basin of a labelled or line neighbour, 0 for any other state.
                const std::int32_t b = (s > kFreshNotMax) ? (s < 0 ? -s : s) : 0;
                first = first ? first : b;
                single &= (b == 0) | (b == first);
            }
            if (single) {
                state[p] = first;
                continue;
            }
            int k = 0;
            for (const std::ptrdiff_t o : nh.offset) {
                const std::int32_t s = state[p + o];
                if (s > 0) seen[k++] = {s, true};
                else if (is_line(s)) seen[k++] = {-s, false};
            }
            state[p] = decide(basins, seen, k, roots, KeyOf<T>::value(keys[p]), lam, line);
        }
    }
}

// Pass 4, in place: final labels 1..N in raster order of each object's first pixel,
// background and watershed lines 0, moved from the padded grid to the first
// height * width entries (each write lands on an entry already read).
inline void number_objects(std::int32_t* state, std::ptrdiff_t height, std::ptrdiff_t width, Basins& basins) {
    const std::ptrdiff_t stride = padded_stride(width);
    std::vector<std::int32_t> final_id(basins.peak.size(), 0);
    std::int32_t next = 0, last_basin = 0, last_id = 0;
    for (std::ptrdiff_t y = 0; y < height; ++y) {
        const std::int32_t* src = state + (y + 1) * stride + 1;
        std::int32_t* dst = state + y * width;
        for (std::ptrdiff_t x = 0; x < width; ++x) {
            const std::int32_t s = src[x];
            if (s <= 0) {
                dst[x] = 0;
            } else if (s == last_basin) {
                dst[x] = last_id;
            } else {
                const std::int32_t r = basins.label_root(s);
                if (final_id[r] == 0) final_id[r] = ++next;
                last_basin = s;
                last_id = dst[x] = final_id[r];
            }
        }
    }
}

}  // namespace detail

// Size of the `out` buffer watershed_dynamics needs: the padded grid it works in.
inline std::size_t buffer_size(std::ptrdiff_t height, std::ptrdiff_t width) {
    return static_cast<std::size_t>(height + 2) * static_cast<std::size_t>(detail::padded_stride(width));
}

// Segment a 2-D nucleus probability map (C-contiguous, row-major). `out` must hold
// buffer_size(height, width) int32 values: the sweep runs in it, and on return its
// first height * width values are the labels, row-major. T is uint8_t, uint16_t,
// float or double; values must be finite and lam >= 0 (the Python wrapper validates;
// this is the safety net). Extra memory: one key per pixel (sizeof(T) bytes) plus
// per-component lists. `interrupted()` is polled every 2^18 pixels; returning true
// aborts with Interrupted.
template <class T, class Interrupt>
void watershed_dynamics(const T* prob, std::ptrdiff_t height, std::ptrdiff_t width, double threshold,
                        double lam, int connectivity, bool watershed_line, std::int32_t* out,
                        Interrupt&& interrupted) {
    if (height <= 0 || width <= 0) throw std::invalid_argument("watershed_dynamics: empty image");
    if (connectivity != 1 && connectivity != 2)
        throw std::invalid_argument("watershed_dynamics: connectivity must be 1 or 2");
    if (!(lam >= 0)) throw std::invalid_argument("watershed_dynamics: lam must be >= 0");
    if constexpr (std::is_integral<T>::value) {
        if (!(threshold >= 0)) throw std::invalid_argument("watershed_dynamics: threshold must be >= 0 for integer maps");
    }
    if (static_cast<std::uint64_t>(buffer_size(height, width)) > static_cast<std::uint64_t>(detail::kMaxBasins))
        throw std::length_error("watershed_dynamics: image too large for int32 labels");

    using Key = typename KeyOf<T>::Key;
    const std::size_t size = buffer_size(height, width);
    std::unique_ptr<Key[]> keys(new Key[size]);
    detail::fill_keys(prob, height, width, detail::Foreground<T>(threshold), keys.get());
    detail::Basins basins;
    basins.add(0.0);  // id 0 is unused: labels are > 0
    if (connectivity == 1) {
        detail::classify<Key, 4>(keys.get(), height, width, out);
        detail::flood<T, 4>(keys.get(), height, width, lam, watershed_line, out, basins, interrupted);
    } else {
        detail::classify<Key, 8>(keys.get(), height, width, out);
        detail::flood<T, 8>(keys.get(), height, width, lam, watershed_line, out, basins, interrupted);
    }
    keys.reset();
    detail::number_objects(out, height, width, basins);
}

}  // namespace nucseg
