use pyo3 as _; use numpy as _; use modelhost_core as _;
