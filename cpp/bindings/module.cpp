// nucseg._core: the compiled kernels. One register_<area>() per binding file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_watershed(py::module_& m);
void register_shape(py::module_& m);
void register_resample(py::module_& m);
void register_regions(py::module_& m);

PYBIND11_MODULE(_core, m) {
    m.doc() = "nucseg compiled kernels (private: use nucseg.watershed_dynamics)";
    register_watershed(m);
    register_shape(m);
    register_resample(m);
    register_regions(m);
}
