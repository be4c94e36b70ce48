/*
 * connect_client: the load generator for benchmarks/transport_bench.py's
 * connection rate, in C, so that the server sets the rate.
 *
 * What it measures is a server's whole cost of a short connection: accept,
 * whatever the server builds for it (a protocol, a transport), one 64-byte
 * echo, and the end (the peer's FIN read, the socket closed). SLOTS
 * connections are in flight at once; each one connects to 127.0.0.1:PORT
 * (non-blocking), sends a 64-byte message once connected, waits for all 64
 * bytes back, closes, and its slot at once starts the next connection, on
 * one level-triggered epoll loop.
 *
 * Usage: connect_client PORT SLOTS CONNECTIONS
 * It runs a warm-up of CONNECTIONS/10 connections, prints "@@READY", then
 * for every line "go" on standard input makes CONNECTIONS connections
 * (counted over all slots) and prints
 * "@@RUN {"trips": N, "seconds": S}"; end of file on stdin ends it: the
 * protocol and output of pingpong_client, so the harness drives either.
 *
 * The client closes first, so the TIME_WAIT states are the client's; on
 * loopback Linux reuses them for new connections (net.ipv4.tcp_tw_reuse's
 * default, 2), so the ephemeral ports last however many connections a run
 * makes. A connect that fails (the server's backlog full: ECONNREFUSED
 * never happens on a listening port, EAGAIN does when the local ports run
 * out) ends the program with a message and exit status 1, as does an early
 * end of stream or a wrong echo.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 64
#define MAX_EVENTS 512

struct slot {
    int fd;    /* -1: idle */
    int state; /* 0: connecting, 1: waiting for the echo */
    int got;   /* bytes of the echo received */
};

static struct sockaddr_in server;
static const char message[MSG] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";

static void die(const char *what) {
    perror(what);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Start slot i's next connection. */
static void start(int ep, struct slot *slots, int i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS)
        die("connect");
    slots[i] = (struct slot){.fd = fd, .state = 0, .got = 0};
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl ADD");
}

/* Make `total` connections over all slots; the seconds it took. */
static double run(int ep, struct slot *slots, int nslots, long total) {
    long started = 0, done = 0;
    double t0 = now();
    for (int i = 0; i < nslots && started < total; i++, started++)
        start(ep, slots, i);
    static char buf[64 * 1024];
    struct epoll_event events[MAX_EVENTS];
    while (done < total) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 10000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        if (n == 0) {
            fprintf(stderr, "no progress for 10 s (%ld of %ld connections)\n", done, total);
            exit(1);
        }
        for (int e = 0; e < n; e++) {
            int i = (int)events[e].data.u32;
            struct slot *s = &slots[i];
            if (s->state == 0) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    errno = err;
                    die("connect (SO_ERROR)");
                }
                if (send(s->fd, message, MSG, MSG_NOSIGNAL) != MSG)
                    die("send");
                s->state = 1;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) < 0)
                    die("epoll_ctl MOD");
                continue;
            }
            ssize_t r = recv(s->fd, buf, sizeof buf, 0);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            if (r <= 0) {
                fprintf(stderr, "connection ended: %s\n", r ? strerror(errno) : "end of stream");
                exit(1);
            }
            if (s->got + r > MSG || memcmp(buf, message + s->got, (size_t)r) != 0) {
                fprintf(stderr, "wrong echo (%zd bytes)\n", r);
                exit(1);
            }
            s->got += (int)r;
            if (s->got < MSG)
                continue;
            /* close() also removes the descriptor from the epoll set. */
            close(s->fd);
            s->fd = -1;
            done++;
            if (started < total) {
                started++;
                start(ep, slots, i);
            }
        }
    }
    return now() - t0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: connect_client PORT SLOTS CONNECTIONS\n");
        return 2;
    }
    int port = atoi(argv[1]), nslots = atoi(argv[2]);
    long total = atol(argv[3]);
    if (port <= 0 || nslots <= 0 || total <= 0) {
        fprintf(stderr, "PORT, SLOTS and CONNECTIONS must be positive\n");
        return 2;
    }
    struct slot *slots = calloc((size_t)nslots, sizeof *slots);
    if (!slots)
        die("calloc");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    server = (struct sockaddr_in){.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    long warm = total / 10 > nslots ? total / 10 : nslots;
    run(ep, slots, nslots, warm);
    printf("@@READY\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "go", 2) != 0)
            break;
        double seconds = run(ep, slots, nslots, total);
        printf("@@RUN {\"trips\": %ld, \"seconds\": %.6f}\n", total, seconds);
        fflush(stdout);
    }
    return 0;
}
