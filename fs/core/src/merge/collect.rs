//! Builds the planner input from metadata stores.
