//! Condition types and reasons shared by the components.
