// Binding for nucseg::region_stats: dtype and shape checks, GIL release. Used by
// python/nucseg/wsi/tiling.py (tile ownership); private.
#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "nucseg/regions.hpp"

namespace py = pybind11;

namespace {

using Labels = py::array_t<std::int32_t, py::array::c_style>;

template <class V>
py::tuple run(const Labels& labels, const V* values, bool moments) {
    const std::ptrdiff_t h = labels.shape(0), w = labels.shape(1);
    const std::int32_t* src = labels.data();
    std::int32_t n = 0;
    {
        py::gil_scoped_release release;
        for (std::ptrdiff_t i = 0; i < h * w; ++i) n = std::max(n, src[i]);
    }
    const py::ssize_t m = static_cast<py::ssize_t>(n) + 1;
    py::array_t<std::int64_t> first(m), area(m), sum_y(m), sum_x(m), box({m, py::ssize_t{4}});
    py::array_t<double> sum_value(values != nullptr ? m : 0);
    py::array_t<std::int64_t> second({moments ? m : py::ssize_t{0}, py::ssize_t{3}});
    std::int64_t *f = first.mutable_data(), *a = area.mutable_data(), *sy = sum_y.mutable_data(),
                 *sx = sum_x.mutable_data(), *b = box.mutable_data();
    double* sv = values != nullptr ? sum_value.mutable_data() : nullptr;
    std::int64_t* m2 = moments ? second.mutable_data() : nullptr;
    {
        py::gil_scoped_release release;
        nucseg::region_stats(src, values, h, w, n, f, a, sy, sx, sv, b, m2);
    }
    return py::make_tuple(first, area, sum_y, sum_x, values != nullptr ? py::object(sum_value) : py::none(), box,
                          moments ? py::object(second) : py::none());
}

py::tuple region_stats(const Labels& labels, const py::object& values, bool moments) {
    if (labels.ndim() != 2) throw std::invalid_argument("labels must be 2-D");
    if (values.is_none()) return run<float>(labels, nullptr, moments);
    const auto check = [&](const py::array& v) {
        if (v.ndim() != 2 || v.shape(0) != labels.shape(0) || v.shape(1) != labels.shape(1))
            throw std::invalid_argument("values must have the labels' shape");
    };
    if (py::isinstance<py::array_t<float, py::array::c_style>>(values)) {
        const auto v = values.cast<py::array_t<float, py::array::c_style>>();
        check(v);
        return run<float>(labels, v.data(), moments);
    }
    const auto v = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(values);
    if (!v) throw std::invalid_argument("values must be a real array");
    check(v);
    return run<double>(labels, v.data(), moments);
}

}  // namespace

void register_regions(py::module_& m) {
    m.def("region_stats", &region_stats, py::arg("labels"), py::arg("values") = py::none(),
          py::arg("moments") = false,
          "Per-label first pixel, area, coordinate sums, value sum, box and second moments of int32 "
          "labels 0..max (private; see nucseg.wsi.tiling.own_objects, nucseg.morphometrics).");
}
