"""The data: reading the STS/SICK files and the corpus (:mod:`~jtcse.data.readers`, one reader and one rule for
validation, training and evaluation), the facts the bundle is held to (:mod:`~jtcse.data.bundle_facts`), and the
great-expectations gate (:mod:`~jtcse.data.validation`, which runs the suites of :mod:`~jtcse.data.suites`)."""
