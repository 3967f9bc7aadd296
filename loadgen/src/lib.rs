//! coreq's load generator and webhook receiver (being written).
