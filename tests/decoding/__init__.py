"""EBD tests: a package, so the SMC tests can reuse the enumerable toy of the MH tests."""
