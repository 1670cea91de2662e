"""Data: ScanNet I/O, synthetic ScanNet-format scenes and preprocessing."""
