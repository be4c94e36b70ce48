/*
 * pingpong_client: the load generator for benchmarks/transport_bench.py's
 * ping-pong, in C, so that the server sets the rate.
 *
 * The Twisted ping-pong client (reactor_bench.py's Pinger) needs more CPU
 * per round trip than the servers it measures, so with it on the other
 * core the rate is the client's. This one does what it does with nothing
 * in between: CONNS connections to 127.0.0.1:PORT (TCP_NODELAY), each
 * sending a 64-byte message and, once all 64 bytes are echoed back,
 * sending it again, on one level-triggered epoll loop.
 *
 * Usage: pingpong_client PORT CONNS TRIPS
 * It connects, runs a warm-up rally of TRIPS/10 round trips, prints
 * "@@READY", then for every line "go" on standard input runs a rally of
 * TRIPS round trips (counted over all connections) and prints
 * "@@RUN {"trips": N, "seconds": S}"; end of file on stdin ends it.
 * The protocol and the output are those of _twisted_peers.py pingpong, so
 * the harness drives either.
 *
 * Invariants: a rally starts a message on every connection and stops
 * sending once TRIPS messages were started, so exactly TRIPS round trips
 * complete and no echo of one rally is counted in the next (the loop waits
 * for every outstanding echo before the rally ends). Any error or an early
 * end of stream ends the program with a message and exit status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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

struct conn {
    int fd;
    int got; /* bytes of the current echo received; -1: idle */
};

static void die(const char *what) {
    perror(what);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char message[MSG] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";

static void send_message(struct conn *c) {
    ssize_t n = send(c->fd, message, MSG, MSG_NOSIGNAL);
    if (n != MSG) {
        /* 64 bytes into an empty socket buffer never write short. */
        if (n < 0)
            die("send");
        fprintf(stderr, "short send: %zd\n", n);
        exit(1);
    }
    c->got = 0;
}

/* Run one rally of `trips` round trips over all connections. */
static double rally(int ep, struct conn *conns, int nconns, long trips) {
    long started = 0, done = 0;
    double t0 = now();
    for (int i = 0; i < nconns && started < trips; i++, started++)
        send_message(&conns[i]);
    static char buf[64 * 1024];
    struct epoll_event events[MAX_EVENTS];
    while (done < trips) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 10000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        if (n == 0) {
            fprintf(stderr, "no echo for 10 s (%ld of %ld round trips)\n", done, trips);
            exit(1);
        }
        for (int e = 0; e < n; e++) {
            struct conn *c = &conns[events[e].data.u32];
            ssize_t r = recv(c->fd, buf, sizeof buf, 0);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            if (r <= 0) {
                fprintf(stderr, "connection ended: %s\n", r ? strerror(errno) : "end of stream");
                exit(1);
            }
            if (c->got < 0 || c->got + r > MSG) {
                fprintf(stderr, "unexpected %zd bytes\n", r);
                exit(1);
            }
            c->got += (int)r;
            if (c->got < MSG)
                continue;
            done++;
            c->got = -1;
            if (started < trips) {
                started++;
                send_message(c);
            }
        }
    }
    return now() - t0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: pingpong_client PORT CONNS TRIPS\n");
        return 2;
    }
    int port = atoi(argv[1]), nconns = atoi(argv[2]);
    long trips = atol(argv[3]);
    if (port <= 0 || nconns <= 0 || trips <= 0) {
        fprintf(stderr, "PORT, CONNS and TRIPS must be positive\n");
        return 2;
    }
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns)
        die("calloc");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < nconns; i++) {
        /* Blocking connects (loopback: immediate), then non-blocking I/O. */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
            die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
            die("fcntl");
        conns[i] = (struct conn){.fd = fd, .got = -1};
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl ADD");
    }
    long warm = trips / 10 > nconns ? trips / 10 : nconns;
    rally(ep, conns, nconns, warm);
    printf("@@READY\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "go", 2) != 0)
            break;
        double seconds = rally(ep, conns, nconns, trips);
        printf("@@RUN {\"trips\": %ld, \"seconds\": %.6f}\n", trips, seconds);
        fflush(stdout);
    }
    return 0;
}
