//! price (to be written).
