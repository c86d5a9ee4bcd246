// NBD protocol: see NBD*.swift
