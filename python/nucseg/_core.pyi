import numpy as np
import numpy.typing as npt

MAX_PIXELS: int

def watershed_dynamics(
    prob: npt.NDArray[np.uint8 | np.uint16 | np.float32 | np.float64],
    lam: float,
    threshold: float,
    connectivity: int,
    watershed_line: bool,
) -> npt.NDArray[np.int32]: ...
def _interrupt_polls() -> int: ...

def perimeter_and_convex_area(
    labels: npt.NDArray[np.int32], n: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]: ...

def resample_separable(
    src: npt.NDArray[np.uint8],
    row_index: npt.NDArray[np.int64 | np.int32],
    row_weight: npt.NDArray[np.float32],
    col_index: npt.NDArray[np.int64 | np.int32],
    col_weight: npt.NDArray[np.float32],
) -> npt.NDArray[np.uint8]: ...

def region_stats(
    labels: npt.NDArray[np.int32], values: npt.NDArray[np.floating] | None = None, moments: bool = False
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float64] | None,
    npt.NDArray[np.int64],
    npt.NDArray[np.int64] | None,
]: ...
