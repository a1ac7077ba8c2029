// Monotone priority queues for the flooding sweep. Header-only, no Python.
//
// Both queues pop the HIGHEST value first and break ties first-in-first-out
// (the order of pushes), which is the tie rule of the whole algorithm. Both rely
// on the sweep being monotone: nothing is ever pushed above the level being
// popped (a pixel is reached from a regional maximum through non-increasing
// values), which is what makes them exact and fast.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace nucseg {

// Hierarchical (bucket) queue for 8- and 16-bit maps: one FIFO segment per grey
// level, sized from the histogram, because every pixel is pushed exactly once.
// Push and pop are O(1); total memory is 4 bytes per queued pixel.
template <class T>
class BucketQueue {
    static_assert(std::is_integral<T>::value && sizeof(T) <= 2, "8- or 16-bit maps only");

public:
    static constexpr std::size_t kLevels = std::size_t{1} << (8 * sizeof(T));

    // counts[v] = number of pixels that will ever be pushed at level v.
    explicit BucketQueue(const std::vector<std::uint32_t>& counts)
        : head_(kLevels), tail_(kLevels), level_(static_cast<std::ptrdiff_t>(kLevels) - 1) {
        std::size_t total = 0;
        for (std::size_t v = 0; v < kLevels; ++v) {
            head_[v] = tail_[v] = total;
            total += counts[v];
        }
        items_.resize(total);
    }

    void push(T value, std::uint32_t index) { items_[tail_[value]++] = index; }

    bool empty() {
        while (level_ >= 0 && head_[level_] == tail_[level_]) --level_;
        return level_ < 0;
    }

    // Call only after empty() returned false.
    std::uint32_t pop() { return items_[head_[level_]++]; }

private:
    std::vector<std::uint32_t> items_;
    std::vector<std::size_t> head_, tail_;
    std::ptrdiff_t level_;
};

// Order-preserving unsigned key of a float, smallest key = highest value, so a
// min-queue on keys pops the highest probability first. -0.0 and +0.0 share a key
// because they compare equal.
template <class F>
struct FloatKey {
    using Key = std::conditional_t<sizeof(F) == 4, std::uint32_t, std::uint64_t>;
    static Key of(F value) {
        value = value + F(0);  // -0.0 -> +0.0
        Key bits;
        std::memcpy(&bits, &value, sizeof bits);
        constexpr Key sign = Key{1} << (8 * sizeof(Key) - 1);
        const Key ascending = (bits & sign) ? static_cast<Key>(~bits) : static_cast<Key>(bits | sign);
        return static_cast<Key>(~ascending);
    }
};

// Radix heap (Ahuja, Mehlhorn, Orlin & Tarjan 1990) for float maps: a monotone
// min-queue on integer keys with amortised O(log(range)/word) work per item and
// no comparisons between floats. Items move between buckets in order, so equal
// keys leave in push order (FIFO), exactly like the bucket queue.
template <class Key>
class RadixHeap {
    static constexpr int kBits = 8 * sizeof(Key);

public:
    void push(Key key, std::uint32_t index) { buckets_[bucket_of(key)].push_back({key, index}); ++size_; }

    bool empty() const { return size_ == 0; }

    // Call only when not empty.
    std::uint32_t pop() {
        if (head0_ == buckets_[0].size()) refill();
        --size_;
        return buckets_[0][head0_++].index;
    }

private:
    struct Item {
        Key key;
        std::uint32_t index;
    };

    int bucket_of(Key key) const {
        const Key diff = static_cast<Key>(key ^ last_);
        if (diff == 0) return 0;
        if constexpr (sizeof(Key) == 4) return kBits - __builtin_clz(diff);
        else return kBits - __builtin_clzll(diff);
    }

    // Bucket 0 is used up: move the smallest non-empty bucket down, in order.
    void refill() {
        buckets_[0].clear();
        head0_ = 0;
        int b = 1;
        while (buckets_[b].empty()) ++b;
        std::vector<Item>& from = buckets_[b];
        Key lowest = from[0].key;
        for (const Item& item : from)
            if (item.key < lowest) lowest = item.key;
        last_ = lowest;
        for (const Item& item : from) buckets_[bucket_of(item.key)].push_back(item);
        from.clear();
    }

    std::vector<Item> buckets_[kBits + 1];
    std::size_t head0_ = 0;
    std::size_t size_ = 0;
    Key last_ = 0;
};

}  // namespace nucseg
