"""What recorded runs say: paired statistics (scipy where it has the test), comparisons of runs and cells,
pandas reports and their figures. Reads runs through `bertnli.tracking`; never trains."""
