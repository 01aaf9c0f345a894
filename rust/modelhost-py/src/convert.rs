//! Plain data between Python and the core: dicts/lists/scalars ↔ `serde_json::Value`.

use modelhost_core::formats::gguf::{GgufHeader, Value as GValue};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// A Python config value as JSON (dict keys must be str).
pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.is_none() {
        Ok(Value::Null)
    } else if obj.is_instance_of::<PyBool>() {
        Ok(Value::Bool(obj.extract()?))
    } else if obj.is_instance_of::<PyInt>() {
        match obj.extract::<i64>() {
            Ok(i) => Ok(Value::from(i)),
            Err(_) => Ok(Value::from(obj.extract::<u64>()?)),
        }
    } else if obj.is_instance_of::<PyFloat>() {
        let f: f64 = obj.extract()?;
        Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
    } else if obj.is_instance_of::<PyString>() {
        Ok(Value::String(obj.extract()?))
    } else if let Ok(d) = obj.cast::<PyDict>() {
        let mut m = Map::new();
        for (k, v) in d.iter() {
            let key: String = k.extract().map_err(|_| PyTypeError::new_err("config keys must be strings"))?;
            m.insert(key, from_py(&v)?);
        }
        Ok(Value::Object(m))
    } else if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        Ok(Value::Array(obj.try_iter()?.map(|v| from_py(&v?)).collect::<PyResult<_>>()?))
    } else {
        Err(PyTypeError::new_err(format!("unsupported config value of type {}", obj.get_type().name()?)))
    }
}

/// JSON as plain Python objects.
pub fn to_py(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any().unbind(),
            (_, Some(u)) => u.into_pyobject(py)?.into_any().unbind(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any().unbind(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Array(items) => {
            PyList::new(py, items.iter().map(|i| to_py(py, i)).collect::<PyResult<Vec<_>>>()?)?.into_any().unbind()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, v) in m {
                d.set_item(k, to_py(py, v)?)?;
            }
            d.into_any().unbind()
        }
    })
}

fn gguf_value(py: Python<'_>, v: &GValue) -> PyResult<Py<PyAny>> {
    Ok(match v {
        GValue::U8(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::I8(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::U16(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::I16(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::U32(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::I32(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::U64(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::I64(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::F32(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::F64(x) => x.into_pyobject(py)?.into_any().unbind(),
        GValue::Bool(x) => PyBool::new(py, *x).to_owned().into_any().unbind(),
        GValue::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        GValue::Array(items) => {
            PyList::new(py, items.iter().map(|i| gguf_value(py, i)).collect::<PyResult<Vec<_>>>()?)?.into_any().unbind()
        }
    })
}

/// A GGUF header as {"version", "metadata", "tensors": [{name, dims, dtype, offset, size}]}.
pub fn header_to_py(py: Python<'_>, h: &GgufHeader) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("version", h.version)?;
    let meta = PyDict::new(py);
    for (k, v) in &h.metadata {
        meta.set_item(k, gguf_value(py, v)?)?;
    }
    d.set_item("metadata", meta)?;
    let tensors = PyList::empty(py);
    for t in &h.tensors {
        let td = PyDict::new(py);
        td.set_item("name", &t.name)?;
        td.set_item("dims", &t.dims)?;
        td.set_item("dtype", t.dtype.name())?;
        td.set_item("offset", t.offset)?;
        td.set_item("size", t.size)?;
        tensors.append(td)?;
    }
    d.set_item("tensors", tensors)?;
    Ok(d.into_any().unbind())
}
