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
// 0 is background or a foreground pixel not yet gathered into its component.
constexpr std::int32_t kQueued = std::numeric_limits<std::int32_t>::min();  // pushed, not yet flooded
constexpr std::int32_t kSeenMax = kQueued + 1;     // gathered, on a regional-maximum plateau
constexpr std::int32_t kSeenNotMax = kQueued + 2;  // gathered, not on a maximum plateau
constexpr std::int32_t kMaxBasins = std::numeric_limits<std::int32_t>::max() - 3;

enum Status : std::uint8_t { kTop = 0, kMarker = 1, kNonMarker = 2 };

inline bool is_line(std::int32_t s) { return s < 0 && s > kSeenNotMax; }

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

// The first foreground pixel at or after i not yet gathered into a component (or n).
// A function of its own so that the loop's index stays in a register.
template <class T>
std::ptrdiff_t next_start(const T* v, const std::int32_t* out, const Foreground<T>& in_f, std::ptrdiff_t i,
                          std::ptrdiff_t n) {
    for (; i < n; ++i)
        if (in_f(v[i]) && out[i] == 0) return i;  // background first: cheaper to read
    return n;
}

// Passes 2 and 3, one connected component of F at a time. Components never
// interact, and restricting the sweep to one keeps every access inside a small
// neighbourhood of memory (a global sweep visits pixels level by level all over the
// image and is bound by cache misses). The result is the same as one global sweep:
// within a component the order of pushes, the order of basin ids (raster order of
// each plateau's first pixel) and so every tie decision are unchanged.
template <class T, class Queue, class Interrupt>
void flood(const T* v, std::ptrdiff_t height, std::ptrdiff_t width, const Foreground<T>& in_f,
           const Neighbourhood& nh, double lam, bool line, std::int32_t* out, Queue& queue,
           Interrupt&& interrupted) {
    const std::ptrdiff_t n = height * width;
    Basins basins;
    basins.add(0.0);  // id 0 is unused: labels are > 0
    std::vector<std::uint32_t> component, maxima, stack;
    std::uint64_t work = 0;  // pixels flooded, to poll for interrupts

    struct Seen {
        std::int32_t basin;
        bool real;  // a labelled pixel, not a watershed line
    };
    Seen seen[8];
    std::int32_t roots[8];

    // Give `state` to the candidate-maximum plateau of pixel m (equal values, depth-first).
    auto relabel_plateau = [&](std::uint32_t m, std::int32_t state) {
        out[m] = state;
        stack.push_back(m);
        while (!stack.empty()) {
            const std::ptrdiff_t p = stack.back();
            stack.pop_back();
            for_neighbours(nh, height, width, p, [&](std::ptrdiff_t j) {
                if (out[j] == kSeenMax && v[j] == v[m]) {
                    out[j] = state;
                    stack.push_back(static_cast<std::uint32_t>(j));
                }
            });
        }
    };

    for (std::ptrdiff_t start = next_start(v, out, in_f, 0, n); start < n; start = next_start(v, out, in_f, start + 1, n)) {

        // Gather the component (breadth-first), telling apart the pixels with a
        // strictly higher neighbour from the candidate maxima.
        // Branch-free inner loop (a neighbour's fate is unpredictable): every neighbour
        // is written to the list, which only grows when the neighbour is new.
        maxima.clear();
        out[start] = kSeenMax;
        component.resize(std::max<std::size_t>(component.capacity(), 1024));
        component[0] = static_cast<std::uint32_t>(start);
        std::size_t size = 1;
        for (std::size_t h = 0; h < size; ++h) {
            if (size + 8 > component.size()) component.resize(2 * component.size());
            std::uint32_t* list = component.data();
            const std::ptrdiff_t p = list[h];
            const T vp = v[p];
            bool higher = false;
            for_neighbours(nh, height, width, p, [&](std::ptrdiff_t j) {
                const T vj = v[j];
                const std::int32_t s = out[j];
                higher |= vj > vp;  // a strictly higher neighbour is in F because v[p] is
                const bool fresh = (s == 0) & in_f(vj);
                out[j] = fresh ? kSeenMax : s;
                list[size] = static_cast<std::uint32_t>(j);
                size += fresh;
            });
            if (higher) out[p] = kSeenNotMax;
            else maxima.push_back(static_cast<std::uint32_t>(p));
        }
        component.resize(size);
        // A candidate on a plateau that also holds a non-maximum pixel is no maximum:
        // demote its whole plateau.
        for (const std::uint32_t m : maxima) {
            if (out[m] != kSeenMax) continue;
            bool beside_non_max = false;
            for_neighbours(nh, height, width, m,
                           [&](std::ptrdiff_t j) { beside_non_max |= out[j] == kSeenNotMax && v[j] == v[m]; });
            if (beside_non_max) relabel_plateau(m, kSeenNotMax);
        }
        maxima.erase(std::remove_if(maxima.begin(), maxima.end(), [&](std::uint32_t m) { return out[m] != kSeenMax; }),
                     maxima.end());
        queue.reset(v, component);

        // Number the maximum plateaus in raster order of their first pixel and push
        // every plateau pixel in raster order, so seeds are the oldest items.
        std::sort(maxima.begin(), maxima.end());
        for (const std::uint32_t m : maxima) {
            if (out[m] == kSeenMax) {
                if (basins.peak.size() > static_cast<std::size_t>(kMaxBasins))
                    throw std::length_error("watershed_dynamics: too many regional maxima for int32 labels");
                relabel_plateau(m, basins.add(static_cast<double>(v[m])));
            }
            queue.push(v[m], m);
        }

        // The sweep.
        while (!queue.empty()) {
            const std::ptrdiff_t p = queue.pop();
            if ((++work & 0x3FFFF) == 0 && interrupted()) throw Interrupted();
            const bool seed = out[p] > 0;
            int k = 0;
            for_neighbours(nh, height, width, p, [&](std::ptrdiff_t j) {
                const std::int32_t s = out[j];
                if (s == kSeenNotMax) {
                    out[j] = kQueued;
                    queue.push(v[j], static_cast<std::uint32_t>(j));
                } else if (!seed) {
                    if (s > 0) seen[k++] = {s, true};
                    else if (is_line(s)) seen[k++] = {-s, false};
                }
            });
            if (seed) continue;  // a maximum plateau pixel: already labelled, nothing meets here

            // Fast path (most pixels): every flooded neighbour carries the same basin, so
            // no components or labels meet and the pixel cannot be a line.
            bool single = true;
            for (int a = 1; a < k; ++a) single &= seen[a].basin == seen[0].basin;
            if (single) {
                out[p] = seen[0].basin;
                continue;
            }
            out[p] = decide(basins, seen, k, roots, static_cast<double>(v[p]), lam, line);
        }

    }

    // Pass 4: final labels 1..N in raster order of each object's first pixel;
    // background and watershed lines are 0.
    std::vector<std::int32_t> final_id(basins.peak.size(), 0);
    std::int32_t next = 0, last_basin = 0, last_id = 0;
    for (std::ptrdiff_t i = 0; i < n; ++i) {
        const std::int32_t s = out[i];
        if (s == 0) continue;
        if (s < 0) {
            out[i] = 0;
        } else if (s == last_basin) {
            out[i] = last_id;
        } else {
            const std::int32_t r = basins.label_root(s);
            if (final_id[r] == 0) final_id[r] = ++next;
            last_basin = s;
            last_id = out[i] = final_id[r];
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
    std::fill(out, out + height * width, 0);
    if constexpr (std::is_same<T, std::uint8_t>::value) {
        BucketQueue queue;
        detail::flood(prob, height, width, in_f, nh, lam, watershed_line, out, queue, interrupted);
    } else {
        SortedQueue<T> queue(static_cast<std::size_t>(height * width));
        detail::flood(prob, height, width, in_f, nh, lam, watershed_line, out, queue, interrupted);
    }
}

}  // namespace nucseg
