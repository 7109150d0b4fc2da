"""What every part uses: optional dependencies, text files, folder locks, processes and devices."""
