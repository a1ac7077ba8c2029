// Keys and the priority queue of the flooding sweep. Header-only, no Python.
//
// The sweep works on order-preserving unsigned keys, smallest key = highest value, so
// every comparison in the hot loops is an integer one and exact. The queue pops the
// smallest key first and breaks ties first-in first-out (the order of pushes), which
// is the tie rule of the whole algorithm. It relies on the sweep being monotone:
// nothing is ever pushed with a key below the one being popped (a pixel is reached
// from a regional maximum through non-increasing values).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace nucseg {

// Key of a value: uint8/uint16 maps use max - v (same width); float32 and float64 use
// their bits, flipped so that unsigned order is descending value order (-0.0 and +0.0
// share a key because they compare equal). `background` is a key no foreground value
// has: integer 0 is never foreground (threshold >= 0) and no float maps to all ones.
template <class T>
struct KeyOf {
    using Key = std::conditional_t<std::is_integral<T>::value, T,
                                   std::conditional_t<sizeof(T) == 8, std::uint64_t, std::uint32_t>>;
    static constexpr Key background = std::numeric_limits<Key>::max();

    static Key of(T value) {
        if constexpr (std::is_integral<T>::value) {
            return static_cast<Key>(std::numeric_limits<T>::max() - value);
        } else {
            value = value + T(0);  // -0.0 -> +0.0
            Key bits;
            std::memcpy(&bits, &value, sizeof bits);
            // Negative: the bits as they are; positive: all but the sign bit flipped.
            const Key negative = static_cast<Key>(Key{0} - (bits >> (8 * sizeof(Key) - 1)));
            return static_cast<Key>(bits ^ (static_cast<Key>(~negative) >> 1));
        }
    }

    // The value of a foreground key (the inverse of of()).
    static double value(Key key) {
        if constexpr (std::is_integral<T>::value) {
            return static_cast<double>(std::numeric_limits<T>::max() - key);
        } else {
            constexpr Key sign = Key{1} << (8 * sizeof(Key) - 1);
            const Key bits = (key & sign) ? key : static_cast<Key>(~key & ~sign);
            T v;
            std::memcpy(&v, &bits, sizeof v);
            return static_cast<double>(v);
        }
    }
};

// Bucket queue for one connected component at a time (Meyer 1991, sized like a
// counting sort). The component's key range [lo, hi] is cut into at most
// max(2 * size, 256) buckets of 2^shift keys each; each bucket is a FIFO segment of
// one array, sized from the component's histogram because every pixel is pushed
// exactly once. When shift is 0 (always for uint8, and for any component with few
// distinct levels) a bucket holds one key and FIFO order is the exact order: O(1)
// push and pop. Otherwise the bucket being popped is moved into a small binary heap
// on (key, push age), so the order stays exact while the heap holds only the few
// pixels of one bucket. 4 bytes per pixel of the component, plus the heap.
template <class Key>
class FloodQueue {
public:
    void reset(const Key* keys, const std::vector<std::uint32_t>& component, Key lo, Key hi) {
        keys_ = keys;
        lo_ = lo;
        const std::uint64_t range = static_cast<std::uint64_t>(hi - lo);
        const std::uint64_t cap = std::max<std::uint64_t>(2 * component.size(), 256);
        shift_ = 0;
        while ((range >> shift_) >= cap) ++shift_;
        buckets_ = static_cast<std::uint32_t>(range >> shift_) + 1;
        if (head_.size() <= buckets_) head_.resize(buckets_ + 1), tail_.resize(buckets_ + 1);
        std::fill(tail_.begin(), tail_.begin() + buckets_, 0u);
        for (const std::uint32_t p : component) ++tail_[bucket(keys[p])];
        std::uint32_t total = 0;
        for (std::uint32_t b = 0; b < buckets_; ++b) {
            const std::uint32_t count = tail_[b];
            head_[b] = tail_[b] = total;
            total += count;
        }
        tail_[buckets_] = total;  // the spare slot of push_if
        if (items_.size() <= total) items_.resize(total + 1);
        heap_.clear();
        current_ = 0;
        age_ = 0;
    }

    void push(Key key, std::uint32_t index) {
        const std::uint32_t b = bucket(key);
        if (shift_ != 0 && b == current_) {
            heap_.push_back({key, age_++, index});
            std::push_heap(heap_.begin(), heap_.end(), Later{});
        } else {
            items_[tail_[b]++] = index;
        }
    }

    // push(key, index) when `take`, without a branch on it when buckets hold one key
    // each (whether a neighbour is pushed is unpredictable): a pixel not taken is
    // written to a spare slot past the last bucket.
    void push_if(bool take, Key key, std::uint32_t index) {
        if (shift_ == 0) {
            const std::uint32_t b = take ? bucket(key) : buckets_;
            items_[tail_[b]] = index;
            tail_[b] += take;
        } else if (take) {
            push(key, index);
        }
    }

    bool empty() {
        if (shift_ == 0) {
            while (head_[current_] == tail_[current_])
                if (++current_ == buckets_) return current_ = buckets_ - 1, true;
            return false;
        }
        if (!heap_.empty()) return false;
        while (head_[current_] == tail_[current_])
            if (++current_ == buckets_) return current_ = buckets_ - 1, true;
        // Move the next bucket into the heap, ages in push order.
        for (std::uint32_t i = head_[current_]; i < tail_[current_]; ++i)
            heap_.push_back({keys_[items_[i]], age_++, items_[i]});
        head_[current_] = tail_[current_];
        if (heap_.size() > 1) std::make_heap(heap_.begin(), heap_.end(), Later{});
        return false;
    }

    // Call only after empty() returned false.
    std::uint32_t pop() {
        if (shift_ == 0) return items_[head_[current_]++];
        if (heap_.size() > 1) std::pop_heap(heap_.begin(), heap_.end(), Later{});
        const std::uint32_t index = heap_.back().index;
        heap_.pop_back();
        return index;
    }

private:
    std::uint32_t bucket(Key key) const { return static_cast<std::uint32_t>(static_cast<std::uint64_t>(key - lo_) >> shift_); }

    struct Item {
        Key key;
        std::uint32_t age;  // pushes per component < 2^32
        std::uint32_t index;
    };
    struct Later {
        bool operator()(const Item& a, const Item& b) const {
            return a.key > b.key || (a.key == b.key && a.age > b.age);
        }
    };

    const Key* keys_ = nullptr;
    Key lo_ = 0;
    unsigned shift_ = 0;
    std::uint32_t buckets_ = 1, current_ = 0, age_ = 0;
    std::vector<std::uint32_t> items_, head_, tail_;
    std::vector<Item> heap_;
};

}  // namespace nucseg
