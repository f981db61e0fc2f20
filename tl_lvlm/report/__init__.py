"""The study report: plain data (:mod:`tl_lvlm.report.data`) drawn as one self-contained
``report.html`` and as PNGs. Knows nothing about models; the study and the CLI fill it."""
