"""
Trial modules that run unmodified Twisted client libraries (treq and Agent,
txpostgres, twisted.enterprise.adbapi with psycopg2, txredisapi) on the
reactor trial is given. tests/test_integration.py runs each of them in a
subprocess under C{trial --reactor=rust} and C{trial --reactor=epoll}, with
the addresses of throwaway servers in the environment (tests/services.py).
"""
