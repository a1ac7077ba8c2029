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
// Data layout: `out` doubles as the state of every pixel during the sweep, so the
// extra memory is the queue (4 bytes per queued pixel for integer maps) plus a small
// record per basin.
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

namespace nucseg {

// Thrown when the interrupt callback asks the sweep to stop (e.g. Ctrl-C).
struct Interrupted : std::exception {
    const char* what() const noexcept override { return "watershed_dynamics interrupted"; }
};

namespace detail {

// States of a pixel in `out` while the sweep runs. Basin ids are > 0; a watershed
// line pixel is stored as -id of the label it carries (lines still propagate the
// flood, so nothing behind a line is left unreached and dynamics stay exact).
constexpr std::int32_t kNotMax = std::numeric_limits<std::int32_t>::min();  // in F, not yet reached
constexpr std::int32_t kQueued = kNotMax + 1;
constexpr std::int32_t kMaxBasins = std::numeric_limits<std::int32_t>::max() - 2;

enum Status : std::uint8_t { kTop = 0, kMarker = 1, kNonMarker = 2 };

inline bool is_line(std::int32_t s) { return s < 0 && s > kQueued; }

// Neighbour offsets in raster order: (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1).
// The order fixes the push order and so the tie rule; the reference uses the same.
struct Neighbourhood {
    int count;
    int dy[8];
    int dx[8];
    std::ptrdiff_t offset[8];

    Neighbourhood(int connectivity, std::ptrdiff_t width) : count(0) {
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

// Calls f(neighbour_index) for each in-bounds neighbour of pixel (y, x), in order.
// Interior pixels skip the bounds test.
template <class Fn>
inline void for_neighbours(const Neighbourhood& nh, std::ptrdiff_t height, std::ptrdiff_t width,
                           std::ptrdiff_t i, Fn&& f) {
    const std::ptrdiff_t y = i / width, x = i - y * width;
    if (y > 0 && x > 0 && y < height - 1 && x < width - 1) {
        for (int k = 0; k < nh.count; ++k) f(i + nh.offset[k]);
    } else {
        for (int k = 0; k < nh.count; ++k) {
            const std::ptrdiff_t yy = y + nh.dy[k], xx = x + nh.dx[k];
            if (yy >= 0 && yy < height && xx >= 0 && xx < width) f(i + nh.offset[k]);
        }
    }
}

// v > threshold, exactly, for every supported dtype: integer maps compare with an
// integer cut (threshold validated to lie in the dtype's range), floats in double.
template <class T>
struct Foreground {
    double threshold;
    T cut;
    explicit Foreground(double t) : threshold(t), cut(0) {
        if constexpr (std::is_integral<T>::value) cut = static_cast<T>(std::floor(t));
    }
    bool operator()(T v) const {
        if constexpr (std::is_integral<T>::value) return v > cut;
        else return static_cast<double>(v) > threshold;
    }
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

// Pass 1: mark every foreground pixel that is not on a regional-maximum plateau
// (it has a strictly higher foreground neighbour, or shares a plateau with one).
// Regional-maximum pixels keep 0, background keeps 0 and is never touched again.
template <class T>
void mark_non_maxima(const T* v, std::ptrdiff_t height, std::ptrdiff_t width, const Foreground<T>& in_f,
                     const Neighbourhood& nh, std::int32_t* out, std::vector<std::uint32_t>& stack) {
    const std::ptrdiff_t n = height * width;
    std::fill(out, out + n, 0);
    for (std::ptrdiff_t i = 0; i < n; ++i) {
        if (out[i] != 0 || !in_f(v[i])) continue;
        const T vi = v[i];
        bool higher = false;
        for_neighbours(nh, height, width, i, [&](std::ptrdiff_t j) { higher |= (v[j] > vi && in_f(v[j])); });
        if (!higher) continue;
        // Flood the plateau of i: none of it is a maximum.
        out[i] = kNotMax;
        stack.push_back(static_cast<std::uint32_t>(i));
        while (!stack.empty()) {
            const std::ptrdiff_t p = stack.back();
            stack.pop_back();
            for_neighbours(nh, height, width, p, [&](std::ptrdiff_t j) {
                if (out[j] == 0 && v[j] == vi && in_f(v[j])) {
                    out[j] = kNotMax;
                    stack.push_back(static_cast<std::uint32_t>(j));
                }
            });
        }
    }
}

template <class T, class Queue, class PushFn, class Interrupt>
void flood(const T* v, std::ptrdiff_t height, std::ptrdiff_t width, const Foreground<T>& in_f,
           const Neighbourhood& nh, double lam, bool line, std::int32_t* out, Queue& queue, PushFn&& push,
           Interrupt&& interrupted) {
    const std::ptrdiff_t n = height * width;
    Basins basins;
    basins.add(0.0);  // id 0 is unused: labels are > 0
    std::vector<std::uint32_t> stack;

    // Pass 2: number the maximum plateaus in raster order of their first pixel and
    // push every plateau pixel in raster order (so seeds are the oldest items).
    for (std::ptrdiff_t i = 0; i < n; ++i) {
        if (out[i] == 0 && in_f(v[i])) {
            if (basins.peak.size() > static_cast<std::size_t>(kMaxBasins))
                throw std::length_error("watershed_dynamics: too many regional maxima for int32 labels");
            const std::int32_t id = basins.add(static_cast<double>(v[i]));
            out[i] = id;
            stack.push_back(static_cast<std::uint32_t>(i));
            while (!stack.empty()) {
                const std::ptrdiff_t p = stack.back();
                stack.pop_back();
                for_neighbours(nh, height, width, p, [&](std::ptrdiff_t j) {
                    if (out[j] == 0 && v[j] == v[i] && in_f(v[j])) {
                        out[j] = id;
                        stack.push_back(static_cast<std::uint32_t>(j));
                    }
                });
            }
        }
        if (out[i] > 0) push(queue, v[i], static_cast<std::uint32_t>(i));
    }
    std::vector<std::uint32_t>().swap(stack);

    // Pass 3: the sweep.
    struct Seen {
        std::int32_t basin;
        bool real;  // a labelled pixel, not a watershed line
    };
    Seen seen[8];
    std::int32_t roots[16];
    std::uint64_t pops = 0;
    while (!queue.empty()) {
        const std::ptrdiff_t p = queue.pop();
        if ((++pops & 0x3FFFF) == 0 && interrupted()) throw Interrupted();
        const bool seed = out[p] > 0;
        int k = 0;
        for_neighbours(nh, height, width, p, [&](std::ptrdiff_t j) {
            const std::int32_t s = out[j];
            if (s == kNotMax) {
                out[j] = kQueued;
                push(queue, v[j], static_cast<std::uint32_t>(j));
            } else if (!seed) {
                if (s > 0) seen[k++] = {s, true};
                else if (is_line(s)) seen[k++] = {-s, false};
            }
        });
        if (seed) continue;  // a maximum plateau pixel: already labelled, nothing meets here

        const double level = static_cast<double>(v[p]);

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

        // 2. Labels meeting here. A label is a marker when its dynamics is known to
        // exceed lam; a component leader whose peak is still within lam of the level
        // is undecided ("unknown") and at most one of them can be here.
        int nl = 0, real_markers = 0;
        std::int32_t best_real = 0, best_line = 0, unknown = 0, oldest = 0;
        for (int a = 0; a < k; ++a) {
            const std::int32_t r = basins.label_root(seen[a].basin);
            const bool fresh = std::find(roots, roots + nl, r) == roots + nl;
            if (fresh) roots[nl++] = r;
            const std::uint8_t st = basins.status[r];
            const bool marker = st == kMarker || (st == kTop && basins.peak[r] - level > lam);
            if (marker) {
                if (seen[a].real) {
                    // count distinct real marker labels
                    bool counted = false;
                    for (int b = 0; b < a; ++b)
                        if (seen[b].real && basins.label_root(seen[b].basin) == r) counted = true;
                    if (!counted) ++real_markers;
                    if (best_real == 0 || r < best_real) best_real = r;
                } else if (best_line == 0 || r < best_line) {
                    best_line = r;
                }
            } else if (st == kTop) {
                unknown = r;
            }
            if (oldest == 0 || r < oldest) oldest = r;
        }
        const std::int32_t target = best_real ? best_real : best_line ? best_line : unknown ? unknown : oldest;
        for (int a = 0; a < nl; ++a) {
            const std::int32_t r = roots[a];
            if (r == target) continue;
            const std::uint8_t st = basins.status[r];
            if (st == kNonMarker) basins.label_parent[r] = target;
        }
        out[p] = (line && real_markers >= 2) ? -target : target;
    }

    // Pass 4: final labels 1..N in raster order of each object's first pixel;
    // background and watershed lines are 0.
    std::vector<std::int32_t> final_id(basins.peak.size(), 0);
    std::int32_t next = 0;
    for (std::ptrdiff_t i = 0; i < n; ++i) {
        const std::int32_t s = out[i];
        if (s > 0) {
            const std::int32_t r = basins.label_root(s);
            if (final_id[r] == 0) final_id[r] = ++next;
            out[i] = final_id[r];
        } else {
            out[i] = 0;
        }
    }
}

}  // namespace detail

// Segment a 2-D nucleus probability map (C-contiguous, row-major) into `out`
// (int32, same shape). T is uint8_t, uint16_t, float or double; values must be
// finite and lam >= 0 (the Python wrapper validates; this is the safety net).
// `interrupted()` is polled every 2^18 pixels; returning true aborts with Interrupted.
template <class T, class Interrupt>
void watershed_dynamics(const T* prob, std::ptrdiff_t height, std::ptrdiff_t width, double threshold,
                        double lam, int connectivity, bool watershed_line, std::int32_t* out,
                        Interrupt&& interrupted) {
    if (height <= 0 || width <= 0) throw std::invalid_argument("watershed_dynamics: empty image");
    if (connectivity != 1 && connectivity != 2)
        throw std::invalid_argument("watershed_dynamics: connectivity must be 1 or 2");
    if (!(lam >= 0)) throw std::invalid_argument("watershed_dynamics: lam must be >= 0");
    if (static_cast<std::uint64_t>(height) * static_cast<std::uint64_t>(width) >
        static_cast<std::uint64_t>(detail::kMaxBasins))
        throw std::length_error("watershed_dynamics: image too large for int32 labels");

    const detail::Foreground<T> in_f(threshold);
    const detail::Neighbourhood nh(connectivity, width);
    std::vector<std::uint32_t> stack;
    detail::mark_non_maxima(prob, height, width, in_f, nh, out, stack);
    std::vector<std::uint32_t>().swap(stack);

    if constexpr (std::is_integral<T>::value) {
        // Every foreground pixel is pushed exactly once: size the buckets from the histogram.
        std::vector<std::uint32_t> counts(BucketQueue<T>::kLevels, 0);
        const std::ptrdiff_t n = height * width;
        for (std::ptrdiff_t i = 0; i < n; ++i)
            if (in_f(prob[i])) ++counts[prob[i]];
        BucketQueue<T> queue(counts);
        detail::flood(prob, height, width, in_f, nh, lam, watershed_line, out, queue,
                      [](BucketQueue<T>& q, T value, std::uint32_t i) { q.push(value, i); }, interrupted);
    } else {
        using Key = typename FloatKey<T>::Key;
        RadixHeap<Key> queue;
        detail::flood(prob, height, width, in_f, nh, lam, watershed_line, out, queue,
                      [](RadixHeap<Key>& q, T value, std::uint32_t i) { q.push(FloatKey<T>::of(value), i); },
                      interrupted);
    }
}

}  // namespace nucseg
