// SCSI: pure CDB builders and parsers. Filled in by SCSI*.swift.
