"""joulegate's benchmarks (`make bench`): each module's ``main()`` prints a table."""
