// Multipath: path selection (see Path*.swift)
