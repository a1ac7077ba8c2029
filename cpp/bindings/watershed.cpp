// Binding for nucseg::watershed_dynamics: dtype dispatch, shape checks, GIL release.
// Argument validation with user-facing messages lives in python/nucseg/postprocess.py.
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "nucseg/watershed.hpp"

namespace py = pybind11;

namespace {

// Interrupt polls made so far (each takes the GIL); read by the tests through
// _core._interrupt_polls() to check that worker threads never poll.
std::atomic<std::uint64_t> polls{0};

// Whether the calling thread is Python's main thread: only it receives signals, so
// only there is taking the GIL to look for Ctrl-C worth its cost (beside a busy
// Python thread each acquisition waits for a switch interval).
bool on_main_thread() {
    const auto main_ident = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    return PyThread_get_thread_ident() == main_ident;
}

template <class T>
py::array_t<std::int32_t> run(const py::array& prob_any, double lam, double threshold, int connectivity,
                              bool watershed_line) {
    if (prob_any.ndim() != 2) throw std::invalid_argument("prob must be 2-D");
    // Before the copy below, which a too-large (e.g. broadcast) array would make first.
    if (prob_any.size() > nucseg::kMaxPixels)
        throw std::length_error("prob has " + std::to_string(prob_any.size()) + " pixels; at most " +
                                std::to_string(nucseg::kMaxPixels) + " fit int32 labels");
    // c_style | forcecast: pybind11 copies non-contiguous or Fortran-ordered input once.
    auto prob = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(prob_any);
    if (!prob) throw py::error_already_set();
    const std::ptrdiff_t height = prob.shape(0), width = prob.shape(1);
    py::array_t<std::int32_t> out({height, width});
    const T* src = prob.data();
    std::int32_t* dst = out.mutable_data();
    const bool poll = on_main_thread();
    bool interrupted = false;
    {
        py::gil_scoped_release release;
        // Polled every 2^18 pixels: on the main thread, take the GIL briefly to see
        // whether Ctrl-C was pressed; elsewhere never (no signal can arrive there).
        auto check = [poll] {
            if (!poll) return false;
            ++polls;
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
    m.attr("MAX_PIXELS") = nucseg::kMaxPixels;
    m.def("_interrupt_polls", [] { return polls.load(); }, "Interrupt polls made so far (a test hook).");
}
