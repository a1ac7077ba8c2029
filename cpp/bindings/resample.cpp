// Binding for nucseg::resample_separable: dtype, shape and contiguity checks, GIL release.
// Used by python/nucseg/wsi/tiling.py, which computes the taps (resample_taps). Nothing is
// converted silently except int32 tap indices (widened; taps are small): a float64 weight
// or a non-uint8 image would not give the bits the tiling contract is stated in.
#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "nucseg/resample.hpp"

namespace py = pybind11;

namespace {

std::string describe(const py::array& a) {
    std::string shape = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) shape += (d ? ", " : "") + std::to_string(a.shape(d));
    return std::string(py::str(a.dtype())) + " array of shape " + shape + (a.ndim() == 1 ? ",)" : ")");
}

void require_c_contiguous(const py::array& a, const char* name) {
    if (!(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string(name) + " must be C-contiguous (np.ascontiguousarray)");
}

// The taps of one axis, with int32 indices widened to an int64 copy kept in `keep`.
nucseg::Taps taps(const py::array& index, const py::array& weight, const char* index_name, const char* weight_name,
                  py::array& keep) {
    const py::dtype dt = index.dtype();
    if (!dt.is(py::dtype::of<std::int64_t>()) && !dt.is(py::dtype::of<std::int32_t>()))
        throw py::type_error(std::string(index_name) + " must be int64 or int32, got " + describe(index));
    if (!weight.dtype().is(py::dtype::of<float>()))
        throw py::type_error(std::string(weight_name) + " must be float32, got " + describe(weight));
    if (index.ndim() != 2)
        throw std::invalid_argument(std::string(index_name) + " must be 2-D (outputs, taps), got " + describe(index));
    if (weight.ndim() != 2 || weight.shape(0) != index.shape(0) || weight.shape(1) != index.shape(1))
        throw std::invalid_argument(std::string(weight_name) + " must have the shape of " + index_name + " " +
                                    describe(index) + ", got " + describe(weight));
    require_c_contiguous(index, index_name);
    require_c_contiguous(weight, weight_name);
    keep = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(index);
    if (!keep) throw py::error_already_set();
    return {static_cast<const std::int64_t*>(keep.data()), static_cast<const float*>(weight.data()), index.shape(0),
            index.shape(1)};
}

py::array_t<std::uint8_t> resample_separable(const py::array& src, const py::array& row_index,
                                             const py::array& row_weight, const py::array& col_index,
                                             const py::array& col_weight) {
    if (!src.dtype().is(py::dtype::of<std::uint8_t>()))
        throw py::type_error("src must be uint8, got " + describe(src));
    if (src.ndim() != 3)
        throw std::invalid_argument("src must be 3-D (height, width, channels), got " + describe(src));
    require_c_contiguous(src, "src");
    py::array rows_keep, cols_keep;
    const nucseg::Taps rows = taps(row_index, row_weight, "row_index", "row_weight", rows_keep);
    const nucseg::Taps cols = taps(col_index, col_weight, "col_index", "col_weight", cols_keep);
    const py::ssize_t channels = src.shape(2);
    py::array_t<std::uint8_t> out({rows.n, cols.n, channels});
    const auto* in = static_cast<const std::uint8_t*>(src.data());
    std::uint8_t* dst = out.mutable_data();
    const py::ssize_t height = src.shape(0), width = src.shape(1);
    {
        py::gil_scoped_release release;
        nucseg::resample_separable(in, height, width, channels, rows, cols, dst);
    }
    return out;
}

}  // namespace

void register_resample(py::module_& m) {
    m.def("resample_separable", &resample_separable, py::arg("src"), py::arg("row_index"), py::arg("row_weight"),
          py::arg("col_index"), py::arg("col_weight"),
          "Separable resampling of a uint8 (H, W, C) image with precomputed taps, bitwise equal to the float32 "
          "NumPy reference (private; see nucseg.wsi.tiling).");
}
