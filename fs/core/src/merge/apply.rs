//! Applies a plan to the home tree.
