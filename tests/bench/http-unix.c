/* One HTTP/1.1 request over a Unix socket, for snapshot-bench's
 * Firecracker runs (tests/src/bin/snapshot-bench.rs), whose L1 host has no
 * curl:
 *
 *   http-unix SOCKET METHOD PATH [JSON-BODY]
 *
 * waits up to 10 s for SOCKET to accept, sends the request, prints the
 * response, and exits 0 for a 2xx status, 1 otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int connect_to(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "http-unix: socket path too long\n");
        return -1;
    }
    strcpy(addr.sun_path, path);
    for (int i = 0; i < 1000; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0)
            return fd;
        close(fd);
        usleep(10000);
    }
    fprintf(stderr, "http-unix: %s: %s\n", path, strerror(errno));
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: http-unix SOCKET METHOD PATH [JSON-BODY]\n");
        return 2;
    }
    const char *body = argc == 5 ? argv[4] : "";
    int fd = connect_to(argv[1]);
    if (fd < 0)
        return 1;
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     argv[2], argv[3], strlen(body));
    if (n < 0 || (size_t)n >= sizeof head || write(fd, head, n) != n ||
        write(fd, body, strlen(body)) != (ssize_t)strlen(body)) {
        fprintf(stderr, "http-unix: cannot send the request\n");
        return 1;
    }
    char buf[65536];
    size_t len = 0;
    ssize_t r;
    /* Firecracker keeps the connection open: the head and a short body
     * arrive together, so one read that holds the status line will do,
     * with more reads while the head is incomplete. */
    while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0) {
        len += r;
        buf[len] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        const char *cl = strcasestr(buf, "Content-Length:");
        size_t want = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
        if (len >= (size_t)(end + 4 - buf) + want)
            break;
    }
    buf[len] = 0;
    printf("%s\n", buf);
    int status = 0;
    sscanf(buf, "HTTP/1.%*d %d", &status);
    return status >= 200 && status < 300 ? 0 : 1;
}
