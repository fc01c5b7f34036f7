//! The file tailer. (Issue 4 fills it in.)
