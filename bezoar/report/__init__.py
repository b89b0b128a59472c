"""The HTML report and the data set / model cards."""
