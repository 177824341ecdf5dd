//! The data pipeline (spec 10).
