// Sanitizer fuzz driver for the header-only core (no Python): random maps of every
// dtype, shapes from 1x1 to thin strips, few to thousands of grey levels, lam from 0 to +inf.
// Built and run under AddressSanitizer + UndefinedBehaviorSanitizer by .ci/sanitize;
// any report aborts the run. The contract itself is checked against the Python
// reference by tests/test_postprocess.py, which .ci/sanitize also runs under ASan.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "nucseg/resample.hpp"
#include "nucseg/watershed.hpp"

namespace {

template <class T>
std::size_t run(std::mt19937& rng, int height, int width, int levels, double lam, int connectivity) {
    std::vector<T> v(static_cast<std::size_t>(height) * width);
    std::uniform_int_distribution<int> level(0, levels);
    const double top = std::is_integral<T>::value ? static_cast<double>(std::numeric_limits<T>::max()) : 1.0;
    for (auto& x : v) x = static_cast<T>(top * level(rng) / (levels > 0 ? levels : 1));
    std::vector<std::int32_t> out(v.size(), -7);
    const double threshold = 0.4 * top;
    nucseg::watershed_dynamics(v.data(), height, width, threshold, lam * top, connectivity, rng() % 2 == 0,
                               out.data(), [] { return false; });
    std::size_t objects = 0;
    for (const std::int32_t label : out) {
        if (label < 0) std::abort();  // every pixel is background, line or an object
        objects = label > static_cast<std::int32_t>(objects) ? static_cast<std::size_t>(label) : objects;
    }
    return objects;
}

// Calls the kernel with arguments that break a precondition: it must throw E before
// anything else (the sanitizers report any undefined behaviour on the way).
template <class E, class T>
int refused(const std::vector<T>& v, std::ptrdiff_t height, std::ptrdiff_t width, double threshold, double lam) {
    std::vector<std::int32_t> out(v.size());
    try {
        nucseg::watershed_dynamics(v.data(), height, width, threshold, lam, 1, true, out.data(), [] { return false; });
    } catch (const E&) {
        return 1;
    }
    std::fprintf(stderr, "fuzz_watershed: a precondition was not enforced (threshold %g, lam %g)\n", threshold, lam);
    std::abort();
}

// Bad thresholds and lam for T, non-finite float values at random places, and sizes
// beyond kMaxPixels (never read: the check comes first). Returns the cases run.
template <class T>
int preconditions(std::mt19937& rng) {
    constexpr double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    const int height = 1 + static_cast<int>(rng() % 9), width = 1 + static_cast<int>(rng() % 40);
    std::vector<T> v(static_cast<std::size_t>(height) * width, T(0));
    int n = 0;
    std::vector<double> bad_thresholds = {nan};
    if constexpr (std::is_integral<T>::value) {
        const double top = static_cast<double>(std::numeric_limits<T>::max());
        for (double t : {-1.0, -0.5, -1e300, top + 1.0, top + 0.5, 1e300, 4294967296.0, -inf, inf}) bad_thresholds.push_back(t);
    } else {
        bad_thresholds.push_back(inf);
        bad_thresholds.push_back(-inf);
    }
    for (const double t : bad_thresholds) n += refused<std::invalid_argument>(v, height, width, t, 0.1);
    for (const double lam : {nan, -1.0, -1e-300, -inf}) n += refused<std::invalid_argument>(v, height, width, 0.0, lam);
    n += refused<std::length_error>(v, std::ptrdiff_t{1} << 31, 1, 0.0, 0.1);
    n += refused<std::length_error>(v, std::ptrdiff_t{1} << 40, std::ptrdiff_t{1} << 40, 0.0, 0.1);  // product overflows
    n += refused<std::length_error>(v, 46341, 46341, 0.0, 0.1);  // just over 2^31
    // The limit itself: one pixel over it is too large; exactly kMaxPixels passes the size
    // check and reaches the threshold's (a NaN threshold, so nothing is read).
    n += refused<std::length_error>(v, nucseg::kMaxPixels + 1, 1, 0.0, 0.1);
    n += refused<std::invalid_argument>(v, nucseg::kMaxPixels, 1, nan, 0.1);
    if constexpr (!std::is_integral<T>::value) {
        for (const double bad : {nan, inf, -inf}) {
            std::vector<T> w(v.size(), T(0.7));
            w[rng() % w.size()] = static_cast<T>(bad);
            n += refused<std::invalid_argument>(w, height, width, 0.5, 0.1);
        }
        // Finite thresholds beyond float's range: defined, all background or all foreground.
        std::vector<std::int32_t> out(v.size());
        for (const double t : {1e300, -1e300, 3.5e38, -3.5e38}) {
            nucseg::watershed_dynamics(v.data(), height, width, t, 0.1, 2, true, out.data(), [] { return false; });
            for (const std::int32_t label : out)
                if (label != (t < 0 ? 1 : 0)) std::abort();
            ++n;
        }
    }
    return n;
}

}  // namespace

// One resampling call with random taps, some outside the source (must throw before any
// read) and weights that may be huge, infinite or NaN (the uint8 conversion must stay
// defined: UBSan's float-cast-overflow would report it). Returns 1 when refused.
int resample_case(std::mt19937& rng) {
    const std::ptrdiff_t h = 1 + rng() % 40, w = 1 + rng() % 40, c = 1 + rng() % 5;
    const std::ptrdiff_t n_rows = rng() % 30, n_cols = rng() % 30, ky = 1 + rng() % 8, kx = 1 + rng() % 8;
    const bool outside = rng() % 8 == 0;
    std::vector<std::uint8_t> src(static_cast<std::size_t>(h * w * c));
    for (auto& v : src) v = static_cast<std::uint8_t>(rng());
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const float odd[] = {nan, inf, -1e30f, 1e30f};
    auto taps = [&](std::ptrdiff_t n, std::ptrdiff_t k, std::ptrdiff_t n_src, std::vector<std::int64_t>& index,
                    std::vector<float>& weight) {
        index.resize(static_cast<std::size_t>(n * k));
        weight.resize(index.size());
        for (std::size_t i = 0; i < index.size(); ++i) {
            index[i] = static_cast<std::int64_t>(rng() % static_cast<unsigned>(n_src));
            weight[i] = rng() % 50 == 0 ? odd[rng() % 4] : static_cast<float>(rng() % 2001) / 1000.0f - 0.5f;
        }
        if (outside && !index.empty()) index[rng() % index.size()] = rng() % 2 ? -1 : n_src;
        return nucseg::Taps{index.data(), weight.data(), n, k};
    };
    std::vector<std::int64_t> iy, ix;
    std::vector<float> wy, wx;
    const nucseg::Taps rows = taps(n_rows, ky, h, iy, wy), cols = taps(n_cols, kx, w, ix, wx);
    std::vector<std::uint8_t> out(static_cast<std::size_t>(n_rows * n_cols * c));
    try {
        nucseg::resample_separable(src.data(), h, w, c, rows, cols, out.data());
    } catch (const std::invalid_argument&) {
        if (!outside) std::abort();  // in-range taps are never refused
        return 1;
    }
    return 0;
}

int main(int argc, char** argv) {
    const long cases = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 20000;
    std::mt19937 rng(12345);
    const double lams[] = {0.0, 0.05, 0.2, 0.5, std::numeric_limits<double>::infinity()};
    std::size_t objects = 0;
    for (long i = 0; i < cases; ++i) {
        int height = 1 + static_cast<int>(rng() % 48), width = 1 + static_cast<int>(rng() % 48);
        if (i % 10 == 0) height = 1;                       // 1xN
        if (i % 10 == 1) width = 1;                        // Nx1
        if (i % 10 == 2) width = 1 + static_cast<int>(rng() % 2000), height = 1 + static_cast<int>(rng() % 3);
        // 0 levels: constant map; few levels: plateaus; hundreds: components with many
        // tied keys (the sorted queue's stamp mode for 16-bit and float maps).
        int levels = i % 3 == 0 ? 100 + static_cast<int>(rng() % 3000) : static_cast<int>(rng() % 9);
        if (i % 8 == 3 || i % 8 == 6) levels = 255;  // double and float maps of k/255 (the bucket queue's 255ths)
        const double lam = lams[rng() % 5];
        const int connectivity = 1 + static_cast<int>(rng() % 2);
        switch (i % 4) {
            case 0: objects += run<std::uint8_t>(rng, height, width, levels, lam, connectivity); break;
            case 1: objects += run<std::uint16_t>(rng, height, width, levels, lam, connectivity); break;
            case 2: objects += run<float>(rng, height, width, levels, lam, connectivity); break;
            default: objects += run<double>(rng, height, width, levels, lam, connectivity); break;
        }
    }
    int refusals = 0;
    for (long i = 0; i < cases / 100 + 1; ++i) {
        refusals += preconditions<std::uint8_t>(rng) + preconditions<std::uint16_t>(rng);
        refusals += preconditions<float>(rng) + preconditions<double>(rng);
    }
    int resample_refusals = 0;
    for (long i = 0; i < cases / 10 + 1; ++i) resample_refusals += resample_case(rng);
    std::printf("fuzz_watershed: %ld cases, %zu objects, %d precondition cases, %ld resampling cases (%d refused), "
                "no sanitizer report\n",
                cases, objects, refusals, cases / 10 + 1, resample_refusals);
    return 0;
}
