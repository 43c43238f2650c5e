"""``make bench``: s3ferry side by side with rclone and s5cmd on the same local endpoints.

Modules follow the data flow of one bench run::

    workloads (what to copy, pure) -> seed (fill the sources once)
        -> tools (run one copier, measured) -> verify (count, sizes, content)
        -> report (medians, ratios, targets: JSON, markdown, PNG)

``diffbench`` is the in-process W5 diff benchmark, run as its own process so that its peak
RSS is its own; ``profile`` attaches py-spy to a worker and ranks functions by self time.
"""
