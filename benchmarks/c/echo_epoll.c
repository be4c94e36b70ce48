/*
 * echo_epoll: the C floor for benchmarks/transport_bench.py.
 *
 * A TCP echo server on one level-triggered epoll loop, the least a server
 * can do for the reactor benchmarks' ping-pong: for each readable
 * connection, one recv() into a 64 KiB buffer and one send() of what was
 * read. It speaks the protocol the Twisted echo server in
 * benchmarks/reactor_bench.py speaks (bytes in, the same bytes back), so
 * the same ping-pong client can be pointed at either.
 *
 * Usage: echo_epoll [PORT]   (default 0: any free port). It listens on
 * 127.0.0.1 with a backlog of 1024, sets TCP_NODELAY on every accepted
 * socket (as the Twisted server does), prints the port on stdout, and runs
 * until killed. The soft RLIMIT_NOFILE is raised to the hard limit, so it
 * can hold as many idle connections as the Twisted servers.
 *
 * Invariants: a connection with unsent bytes (send() wrote less than was
 * read) is registered for EPOLLOUT only, so it reads nothing more until
 * its backlog is written: memory per connection is bounded by one read.
 * A connection that reaches end of file or an error is closed, which also
 * takes it out of the epoll set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 512
#define READ_SIZE (64 * 1024)

/* Bytes read but not yet echoed, per descriptor (NULL when none). */
struct backlog {
    char *data;
    size_t len, off;
};

static struct backlog *pending;
static size_t pending_cap;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void set_interest(int ep, int fd, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) < 0)
        die("epoll_ctl MOD");
}

static void drop(int fd) {
    if ((size_t)fd < pending_cap) {
        free(pending[fd].data);
        pending[fd] = (struct backlog){0};
    }
    close(fd);
}

/* Write what is pending on fd; 1 when all is written, 0 on EAGAIN, -1 on error. */
static int flush_backlog(int fd) {
    struct backlog *b = &pending[fd];
    while (b->off < b->len) {
        ssize_t n = send(fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        b->off += (size_t)n;
    }
    free(b->data);
    *b = (struct backlog){0};
    return 1;
}

static void on_readable(int ep, int fd, char *buf) {
    ssize_t n = recv(fd, buf, READ_SIZE, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        drop(fd);
        return;
    }
    if (n < 0)
        return;
    ssize_t sent = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            drop(fd);
            return;
        }
        sent = 0;
    }
    if (sent == n)
        return;
    /* The socket buffer is full: keep the rest and wait to write it. */
    struct backlog *b = &pending[fd];
    b->len = (size_t)(n - sent);
    b->off = 0;
    b->data = malloc(b->len);
    if (!b->data)
        die("malloc");
    memcpy(b->data, buf + sent, b->len);
    set_interest(ep, fd, EPOLLOUT);
}

static void on_writable(int ep, int fd) {
    int done = flush_backlog(fd);
    if (done < 0)
        drop(fd);
    else if (done > 0)
        set_interest(ep, fd, EPOLLIN);
}

static void accept_all(int ep, int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED)
                return;
            if (errno == EMFILE || errno == ENFILE) {
                perror("accept4");
                return;
            }
            die("accept4");
        }
        if ((size_t)fd >= pending_cap) {
            close(fd);
            fprintf(stderr, "descriptor %d over the limit\n", fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl ADD");
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;

    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    getrlimit(RLIMIT_NOFILE, &lim);
    pending_cap = lim.rlim_cur == RLIM_INFINITY ? 1 << 20 : (size_t)lim.rlim_cur;
    pending = calloc(pending_cap, sizeof *pending);
    if (!pending)
        die("calloc");

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0)
        die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(listener, 1024) < 0)
        die("listen");
    socklen_t addrlen = sizeof addr;
    if (getsockname(listener, (struct sockaddr *)&addr, &addrlen) < 0)
        die("getsockname");
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev) < 0)
        die("epoll_ctl ADD listener");

    static char buf[READ_SIZE];
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            uint32_t what = events[i].events;
            if (fd == listener)
                accept_all(ep, listener);
            else if (pending[fd].data)
                on_writable(ep, fd);
            else if (what & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(ep, fd, buf);
        }
    }
}
