"""Spark glue: the session builder and thin pandas-UDF wrappers around cxrspark.images."""
