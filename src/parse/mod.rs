//! Parsing a line: level, timestamp, labels, terminal sequences. (Issue 3 fills it in.)
