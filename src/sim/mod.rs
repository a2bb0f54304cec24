//! The simulator (to be written).
