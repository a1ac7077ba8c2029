// Priority queues for the flooding sweep. Header-only, no Python.
//
// Both queues pop the HIGHEST value first and break ties first-in first-out (the
// order of pushes), which is the tie rule of the whole algorithm. Both are reused
// across the connected components of the foreground: reset() prepares them for the
// next component. Both rely on the sweep being monotone: nothing is ever pushed
// above the level being popped (a pixel is reached from a regional maximum through
// non-increasing values), and every pixel of a component is pushed exactly once.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(_MSC_VER)
#include <intrin.h>
#endif

namespace nucseg {

// Number of trailing zero bits (bits != 0): the index of the lowest set bit.
inline unsigned trailing_zeros(std::uint64_t bits) {
#if defined(_MSC_VER)
    unsigned long index;
    _BitScanForward64(&index, bits);
    return static_cast<unsigned>(index);
#else
    return static_cast<unsigned>(__builtin_ctzll(bits));
#endif
}

// Hierarchical (bucket) queue for 8-bit maps (Meyer 1991): one FIFO segment per grey
// level, sized from the component's histogram because every pixel is pushed exactly
// once. O(1) push and pop; 4 bytes per pixel of the component. (BucketQueue below
// does the same for any quantised map; this one, on fixed arrays indexed by the value
// itself, is 5-7 % faster on 8-bit maps: 2048^2 map, 23.5-24.7 ms against 25.3-26.4.)
class ByteQueue {
public:
    static constexpr int kLevels = 256;

    // The next component: its pixels' indices component[0..size).
    void reset(const std::uint8_t* values, const std::uint32_t* component, std::size_t size) {
        std::uint32_t counts[kLevels] = {};
        int lo = kLevels - 1, hi = 0;
        for (std::size_t i = 0; i < size; ++i) {
            const int v = values[component[i]];
            ++counts[v];
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
        std::uint32_t total = 0;
        for (int v = lo; v <= hi; ++v) {
            head_[v] = tail_[v] = total;
            total += counts[v];
        }
        lo_ = lo;
        level_ = hi;
        if (items_.size() < total) items_.resize(total);
    }

    static constexpr bool kCanSkipPushes = false;

    void push(std::uint8_t value, std::uint32_t index) { items_[tail_[value]++] = index; }

    bool empty() {
        while (level_ >= lo_ && head_[level_] == tail_[level_]) --level_;
        return level_ < lo_;
    }

    // Call only after empty() returned false.
    std::uint32_t pop() { return items_[head_[level_]++]; }

private:
    std::vector<std::uint32_t> items_;
    std::uint32_t head_[kLevels] = {}, tail_[kLevels] = {};
    std::ptrdiff_t lo_ = 0, level_ = -1;  // not int: stores to int32 pixels could alias an int
};

// Order-preserving unsigned key, smallest key = highest value, so a min-queue on keys
// pops the highest probability first. Floats: -0.0 and +0.0 share a key because they
// compare equal. 16-bit integers: 65535 - v.
template <class T>
struct KeyOf {
    using Key = std::conditional_t<sizeof(T) == 8, std::uint64_t, std::uint32_t>;
    static Key of(T value) {
        if constexpr (std::is_integral<T>::value) {
            return static_cast<Key>(static_cast<Key>(std::numeric_limits<T>::max()) - static_cast<Key>(value));
        } else {
            value = value + T(0);  // -0.0 -> +0.0
            Key bits;
            std::memcpy(&bits, &value, sizeof bits);
            constexpr Key sign = Key{1} << (8 * sizeof(Key) - 1);
            const Key ascending = (bits & sign) ? static_cast<Key>(~bits) : static_cast<Key>(bits | sign);
            return static_cast<Key>(~ascending);
        }
    }
};

// ByteQueue's bucket queue for quantised 16-bit and float maps (float16 inference cast
// to float32, probabilities rounded to 1/1024, and uint8 maps divided by 255: see
// in_255ths). One FIFO segment per distinct value of the
// component, sized from its histogram because every pixel is pushed exactly once.
// A value's slot is (key - lo) >> shift, where `shift` is the number of low bits that
// all the component's keys share, so distinct keys get distinct slots and ties leave in
// push order. Slots are many more than the values present (a component of a map
// rounded to 1/1024 spans ~2.6 slots per distinct value and ~1.9 per pixel), so the
// FIFOs are numbered by rank among the values present, found through a slot -> rank
// table filled from a bitmap of the occupied slots: nothing walks the empty slots.
// O(1) push and pop; 4 bytes per pixel of the component, 4 per slot, 8 per value.
// reset() refuses (returns false) a component whose slots would outnumber 4x its
// pixels and kMinSlots: continuous float maps, which SortedQueue takes. (For quantised
// float maps it replaced a bucket queue on the ranks of distinct keys found by hashing,
// after a radix sort: 2.0x the uint8 time on a 2048^2 map rounded to 1/1024, now
// 1.2-1.3x; before that, per-pixel push stamps costing 4 bytes per image pixel. The rest
// of the gap: 4-8x more distinct values per component than uint8's, so pushes scatter
// over more segments: 1.33x the instructions of a uint8 map, callgrind. A map of 257
// levels (k/256) still takes 1.13-1.17x uint8's time, and reset() is about 2 of the ~5 ms
// difference on a 2048^2 map; tried and not kept, each within 3 %: the slot written into
// the pixel's state by reset() so that push() needs no key, and one FIFO per slot, no
// ranks, on components with no more slots than pixels. k/255 maps, whose keys share no
// low bits, took the sorted queue's bucket mode, 1.75-1.8x uint8; as 255ths here, 1.2-1.3x.)
template <class T>
class BucketQueue {
    using Key = typename KeyOf<T>::Key;

public:
    static constexpr Key kMinSlots = 4096;

    // The next component: its pixels' indices component[0..size). False when the
    // keys are too spread for slots.
    bool reset(const T* values, const std::uint32_t* component, std::size_t size) {
        const Key first = KeyOf<T>::of(values[component[0]]);
        Key lo = first, hi = first, differ = 0;
        for (std::size_t i = 0; i < size; ++i) {
            const Key k = KeyOf<T>::of(values[component[i]]);
            lo = std::min(lo, k);
            hi = std::max(hi, k);
            differ |= k ^ first;  // the bits where some key differs from the first
        }
        unsigned shift = 0;
        while (shift + 1 < 8 * sizeof(Key) && ((differ >> shift) & 1) == 0) ++shift;
        std::size_t slots = 0;
        if (((hi - lo) >> shift) < std::max<Key>(kMinSlots, 4 * static_cast<Key>(size))) {
            on_255ths_ = false;
            lo_ = lo;
            shift_ = shift;
            slots = static_cast<std::size_t>((hi - lo) >> shift) + 1;
        } else if (!in_255ths(values, component, size, slots)) {
            return false;
        }
        // Histogram by slot (in rank_ for now) and the bitmap of occupied slots.
        rank_.assign(slots, 0);
        occupied_.assign((slots + 63) / 64, 0);
        for (std::size_t i = 0; i < size; ++i) {
            const std::size_t s = slot(values[component[i]]);
            ++rank_[s];
            occupied_[s / 64] |= std::uint64_t{1} << (s % 64);
        }
        // Ranks in slot order (highest value first) and each rank's FIFO segment.
        head_.clear();
        std::uint32_t total = 0;
        for (std::size_t w = 0; w < occupied_.size(); ++w) {
            for (std::uint64_t bits = occupied_[w]; bits != 0; bits &= bits - 1) {
                const std::size_t s = 64 * w + trailing_zeros(bits);
                const std::uint32_t count = rank_[s];
                rank_[s] = static_cast<std::uint32_t>(head_.size());
                head_.push_back(total);
                total += count;
            }
        }
        tail_ = head_;
        level_ = 0;
        if (items_.size() < size) items_.resize(size);
        return true;
    }

    static constexpr bool kCanSkipPushes = false;

    void push(T value, std::uint32_t index) { items_[tail_[rank_[slot(value)]]++] = index; }

    bool empty() {
        while (level_ < head_.size() && head_[level_] == tail_[level_]) ++level_;
        return level_ == head_.size();
    }

    // Call only after empty() returned false.
    std::uint32_t pop() { return items_[head_[level_]++]; }

private:
    std::size_t slot(T value) const {
        if (on_255ths_) return static_cast<std::size_t>(top_255th_ - std::lrint(static_cast<double>(value) * 255.0));
        return static_cast<std::size_t>((KeyOf<T>::of(value) - lo_) >> shift_);
    }

    // A float map of k / 255 (a uint8 map divided by 255, as PNG probability maps are read):
    // its keys share no low bits, but k itself is an exact slot. True, with `slots`, when
    // every value of the component is T(k / 255.0) for an integer k in 0..255; the first
    // other value ends the check (a continuous map's first pixel, mostly).
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((noinline))  // off the common paths (keys in slots, continuous maps): reset() stays lean
#endif
    bool in_255ths(const T* values, const std::uint32_t* component, std::size_t size, std::size_t& slots) {
        if constexpr (!std::is_floating_point<T>::value) {
            return false;
        } else {
            long lo = 255, hi = 0;
            for (std::size_t i = 0; i < size; ++i) {
                const T v = values[component[i]];
                const double scaled = static_cast<double>(v) * 255.0;
                if (!(scaled >= -0.5 && scaled <= 255.5)) return false;
                const long k = std::lrint(scaled);
                if (static_cast<T>(static_cast<double>(k) / 255.0) != v) return false;
                lo = std::min(lo, k);
                hi = std::max(hi, k);
            }
            on_255ths_ = true;
            top_255th_ = hi;
            slots = static_cast<std::size_t>(hi - lo) + 1;
            return true;
        }
    }

    std::vector<std::uint32_t> items_, head_, tail_, rank_;
    std::vector<std::uint64_t> occupied_;
    std::size_t level_ = 0;
    Key lo_ = 0;
    unsigned shift_ = 0;
    bool on_255ths_ = false;  // slots are 255ths (in_255ths), not key bits
    long top_255th_ = 0;
};

// Queue for the components of 16-bit and float maps that BucketQueue refuses (keys too
// spread for slots: continuous values), exact (no float is ever compared: keys are
// order-preserving integers). A component's pop order is known up front except on
// ties: every pixel is pushed exactly once, before anything below its value is popped
// (the sweep is monotone), so pixels leave in ascending key order and only pixels of
// equal key need their push order (FIFO). reset() radix-sorts the component by key;
// pop() walks the sorted pixels and replays each run of equal keys in push order,
// recorded in one of two ways:
//   - few tied keys (most float components have none): each tied key owns a FIFO
//     segment and a push finds it by binary search among the tied keys;
//   - many (rare: quantised maps go to BucketQueue unless their keys spread over many
//     binades): a bucket queue on the ranks of the distinct keys. Each distinct key
//     owns the FIFO segment where the sort put its pixels, a small hash table maps a
//     key to its rank, and pops walk the ranks in order.
// Without any tied key the sweep skips push() altogether and walks order().
// Extra memory: about 20 bytes per pixel of the largest component, plus 16 per distinct
// key of it in the bucket mode. (It replaced a bucket-plus-heap queue: 2048^2 float32
// map, whole call, 65 -> 52 ms at the time.)
template <class T>
class SortedQueue {
    using Key = typename KeyOf<T>::Key;

public:
    // The next component: its pixels' indices component[0..size).
    void reset(const T* values, const std::uint32_t* component, std::size_t size) {
        if (keys_.size() < size)
            keys_.resize(size), index_.resize(size), tmp_keys_.resize(size), tmp_index_.resize(size), items_.resize(size);
        Key lo = std::numeric_limits<Key>::max(), hi = 0;
        for (std::size_t i = 0; i < size; ++i) {
            const Key k = KeyOf<T>::of(values[component[i]]);
            keys_[i] = k;
            index_[i] = component[i];
            lo = std::min(lo, k);
            hi = std::max(hi, k);
        }
        sort(size, lo, hi);
        // The tied keys, in key order, each with a FIFO segment sized by its count.
        tied_.clear();
        head_.clear();
        tail_.clear();
        std::uint32_t total = 0;
        for (std::size_t i = 0; i < size;) {
            std::size_t end = i + 1;
            while (end < size && keys_[end] == keys_[i]) ++end;
            if (end - i > 1) {
                tied_.push_back(keys_[i]);
                head_.push_back(total);
                tail_.push_back(total);
                total += static_cast<std::uint32_t>(end - i);
            }
            i = end;
        }
        bucketed_ = tied_.size() > kMaxSearched;
        if (bucketed_) rank_keys(size);
        size_ = size;
        next_ = 0;
        run_ = kNoRun;
        runs_seen_ = 0;
    }

    // Without tied keys the sorted order is the pop order: the sweep may skip push(),
    // empty() and pop() and walk order() instead.
    static constexpr bool kCanSkipPushes = true;
    bool needs_pushes() const { return !tied_.empty(); }
    const std::uint32_t* order() const { return index_.data(); }

    void push(T value, std::uint32_t index) {
        if (tied_.empty()) return;  // the sorted order is the pop order
        const Key key = KeyOf<T>::of(value);
        if (bucketed_) {
            items_[tail_[rank_of(key)]++] = index;
            return;
        }
        const auto it = std::lower_bound(tied_.begin(), tied_.end(), key);
        if (it != tied_.end() && *it == key) items_[tail_[static_cast<std::size_t>(it - tied_.begin())]++] = index;
    }

    bool empty() {
        if (bucketed_) {
            while (level_ < head_.size() && head_[level_] == tail_[level_]) ++level_;
            return level_ == head_.size();
        }
        if (next_ != size_) return false;
        return run_ == kNoRun || head_[run_] == tail_[run_];
    }

    // Call only after empty() returned false.
    std::uint32_t pop() {
        if (bucketed_) return items_[head_[level_]++];
        if (run_ != kNoRun && head_[run_] < tail_[run_]) return items_[head_[run_]++];
        const Key k = keys_[next_];
        if (next_ + 1 == size_ || keys_[next_ + 1] != k) {
            run_ = kNoRun;
            return index_[next_++];
        }
        // A tied key: its members leave in push order; the first was pushed already.
        run_ = runs_seen_++;
        while (next_ < size_ && keys_[next_] == k) ++next_;
        return items_[head_[run_]++];
    }

private:
    // The bucket mode: every distinct key of the sorted component (ascending key, so
    // highest value first) gets a rank and an empty FIFO segment where the sort put
    // its pixels; the hash table (open addressing, at most half full) finds the rank.
    void rank_keys(std::size_t size) {
        head_.clear();
        tail_.clear();
        for (std::size_t i = 0; i < size; ++i)
            if (i == 0 || keys_[i] != keys_[i - 1]) {
                head_.push_back(static_cast<std::uint32_t>(i));
                tail_.push_back(static_cast<std::uint32_t>(i));
            }
        hash_bits_ = 1;
        while ((std::size_t{1} << hash_bits_) < 2 * head_.size()) ++hash_bits_;
        table_.assign(std::size_t{1} << hash_bits_, Slot{0, kEmpty});
        for (std::size_t r = 0; r < head_.size(); ++r) {
            const Key key = keys_[head_[r]];
            std::size_t at = slot_of(key);
            while (table_[at].rank != kEmpty) at = (at + 1) & (table_.size() - 1);
            table_[at] = Slot{key, static_cast<std::uint32_t>(r)};
        }
        level_ = 0;
    }
    std::size_t slot_of(Key key) const {
        return static_cast<std::size_t>((static_cast<std::uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> (64 - hash_bits_));
    }
    std::uint32_t rank_of(Key key) const {  // key is one of the component's
        std::size_t at = slot_of(key);
        while (table_[at].key != key) at = (at + 1) & (table_.size() - 1);
        return table_[at].rank;
    }

    // Sorts (keys_, index_) by key: insertion below 48 pixels, else LSD radix on 8-bit
    // digits (11 from 4,096 pixels), or radix on the top 16 bits plus insertion.
    void sort(std::size_t size, Key lo, Key hi) {
        if (size < 48) {
            insertion_sort(size, ~std::size_t{0});
            return;
        }
        const Key range = hi - lo;
        unsigned bits = 0;  // significant bits of the range
        while (bits < 8 * sizeof(Key) && (range >> bits) != 0) ++bits;
        if (size < 4096 && bits > 16) {
            // The top 16 bits by radix, then the few keys left out of order by insertion
            // (spread keys, as in a smooth map); clustered keys fall back to full radix.
            radix(size, lo, bits - 16, bits, 8);
            if (insertion_sort(size, 4 * size)) return;
        }
        radix(size, lo, 0, bits, size < 4096 ? 8 : 11);
    }

    // LSD radix sort of (keys_, index_) by bits [from, to) of key - lo, `digit` bits at a time.
    void radix(std::size_t size, Key lo, unsigned from, unsigned to, unsigned digit) {
        const Key mask = (Key{1} << digit) - 1;
        std::uint32_t count[(1u << 11) + 1];
        for (unsigned shift = from; shift < to; shift += digit) {
            std::fill(count, count + mask + 2, 0u);
            for (std::size_t i = 0; i < size; ++i) ++count[(((keys_[i] - lo) >> shift) & mask) + 1];
            for (Key d = 0; d < mask; ++d) count[d + 1] += count[d];
            for (std::size_t i = 0; i < size; ++i) {
                const std::uint32_t at = count[((keys_[i] - lo) >> shift) & mask]++;
                tmp_keys_[at] = keys_[i];
                tmp_index_[at] = index_[i];
            }
            keys_.swap(tmp_keys_);
            index_.swap(tmp_index_);
        }
    }

    // Insertion sort of the first `size` entries; gives up (false) after `budget` moves,
    // leaving a permutation of the input.
    bool insertion_sort(std::size_t size, std::size_t budget) {
        std::size_t moves = 0;
        for (std::size_t i = 1; i < size; ++i) {
            const Key k = keys_[i];
            if (!(keys_[i - 1] > k)) continue;
            const std::uint32_t x = index_[i];
            std::size_t j = i;
            for (; j > 0 && keys_[j - 1] > k; --j) keys_[j] = keys_[j - 1], index_[j] = index_[j - 1];
            keys_[j] = k, index_[j] = x;
            moves += i - j;
            if (moves > budget) return false;
        }
        return true;
    }

    static constexpr std::size_t kNoRun = static_cast<std::size_t>(-1);
    static constexpr std::size_t kMaxSearched = 64;  // tied keys found by binary search

    static constexpr std::uint32_t kEmpty = ~std::uint32_t{0};
    struct Slot {
        Key key;
        std::uint32_t rank;
    };

    std::vector<Key> keys_, tmp_keys_, tied_;
    std::vector<std::uint32_t> index_, tmp_index_, items_, head_, tail_;
    std::vector<Slot> table_;
    std::size_t size_ = 0, next_ = 0, run_ = kNoRun, runs_seen_ = 0, level_ = 0;
    unsigned hash_bits_ = 1;
    bool bucketed_ = false;
};

}  // namespace nucseg
