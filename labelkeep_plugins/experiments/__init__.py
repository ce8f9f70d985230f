"""Running a user's command as a trial (shared by ``compare``, ``tune`` and the bench), the
objective read from its report, and the data sets that need no download.
"""
