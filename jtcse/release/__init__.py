"""The release: the package folder and tarball (:mod:`~jtcse.release.packaging`), built from the exported models
(:mod:`~jtcse.release.export`), made checkable by :mod:`~jtcse.release.integrity` and described by the model card
(:mod:`~jtcse.release.model_card` and ``templates/``); the model registry the retrain flow promotes a release
into (:mod:`~jtcse.release.registry`)."""
