// Binding for nucseg::perimeter_and_convex_area: shape checks, GIL release.
// Used by python/nucseg/morphometrics.py, which validates and compacts the labels.
#include <cstdint>
#include <stdexcept>
#include <utility>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "nucseg/shape.hpp"

namespace py = pybind11;

namespace {

std::pair<py::array_t<double>, py::array_t<std::int64_t>> perimeter_and_convex_area(
    const py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>& labels, std::int64_t n) {
    if (labels.ndim() != 2) throw std::invalid_argument("labels must be 2-D");
    if (n < 0) throw std::invalid_argument("n must be >= 0");
    py::array_t<double> perimeter(n);
    py::array_t<std::int64_t> convex(n);
    const std::int32_t* src = labels.data();
    double* per = perimeter.mutable_data();
    std::int64_t* cvx = convex.mutable_data();
    const std::ptrdiff_t h = labels.shape(0), w = labels.shape(1);
    {
        py::gil_scoped_release release;
        nucseg::perimeter_and_convex_area(src, h, w, n, per, cvx);
    }
    return {perimeter, convex};
}

}  // namespace

void register_shape(py::module_& m) {
    m.def("perimeter_and_convex_area", &perimeter_and_convex_area, py::arg("labels"), py::arg("n"),
          "Per-object perimeter and convex area of compact labels 0..n (private; see nucseg.morphometrics).");
}
