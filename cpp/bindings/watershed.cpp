// Binding for nucseg::watershed_dynamics: dtype dispatch, shape checks, GIL release.
// Argument validation with user-facing messages lives in python/nucseg/postprocess.py.
#include <cstdint>
#include <stdexcept>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "nucseg/watershed.hpp"

namespace py = pybind11;

namespace {

template <class T>
py::array_t<std::int32_t> run(const py::array& prob_any, double lam, double threshold, int connectivity,
                              bool watershed_line) {
    // c_style | forcecast: pybind11 copies non-contiguous or Fortran-ordered input once.
    auto prob = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(prob_any);
    if (!prob) throw py::error_already_set();
    if (prob.ndim() != 2) throw std::invalid_argument("prob must be 2-D");
    const std::ptrdiff_t height = prob.shape(0), width = prob.shape(1);
    py::array_t<std::int32_t> out({height, width});
    const T* src = prob.data();
    std::int32_t* dst = out.mutable_data();
    bool interrupted = false;
    {
        py::gil_scoped_release release;
        // Polled every 2^18 pixels: take the GIL briefly to see whether Ctrl-C was pressed.
        auto check = [] {
            py::gil_scoped_acquire acquire;
            return PyErr_CheckSignals() != 0;
        };
        try {
            nucseg::watershed_dynamics(src, height, width, threshold, lam, connectivity, watershed_line, dst, check);
        } catch (const nucseg::Interrupted&) {
            interrupted = true;
        }
    }
    if (interrupted) throw py::error_already_set();  // the KeyboardInterrupt set by PyErr_CheckSignals
    return out;
}

py::array_t<std::int32_t> dispatch(const py::array& prob, double lam, double threshold, int connectivity,
                                   bool watershed_line) {
    const py::dtype dt = prob.dtype();
    if (dt.is(py::dtype::of<std::uint8_t>())) return run<std::uint8_t>(prob, lam, threshold, connectivity, watershed_line);
    if (dt.is(py::dtype::of<std::uint16_t>())) return run<std::uint16_t>(prob, lam, threshold, connectivity, watershed_line);
    if (dt.is(py::dtype::of<float>())) return run<float>(prob, lam, threshold, connectivity, watershed_line);
    if (dt.is(py::dtype::of<double>())) return run<double>(prob, lam, threshold, connectivity, watershed_line);
    throw py::type_error("prob must be uint8, uint16, float32 or float64");
}

}  // namespace

void register_watershed(py::module_& m) {
    m.def("watershed_dynamics", &dispatch, py::arg("prob"), py::arg("lam"), py::arg("threshold"),
          py::arg("connectivity"), py::arg("watershed_line"),
          "Kernel of nucseg.watershed_dynamics; arguments are validated by the Python wrapper.");
}
