/*
 * The benchmarks' log writer: TOTAL bytes of LINE-byte lines on stdout, 1 MiB a write.
 *
 *     writer LINE TOTAL [SLEEP]
 *
 * Each line is LINE-1 bytes of '0' and a newline; the stream is written in blocks
 * of 1 MiB (the last one shorter), so lines straddle blocks whenever LINE does not
 * divide 1 MiB, as they do in a real app's output.  A TOTAL that is not a multiple
 * of LINE ends with an unterminated line.  With SLEEP, the writer then sleeps that
 * many seconds with stdout still open (a container that logged and idles).
 *
 * Built static by the benchmarks (gcc -static -O2) so that the same binary runs on
 * the host and in any container; a writer this cheap is never what limits a log
 * path, unlike `yes | head -c` (two processes and small copies).  Exit status: 0,
 * or 1 with a message on stderr when stdout fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK (1UL << 20)

static unsigned long long number(const char *text, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-') {
        fprintf(stderr, "writer: %s must be a number, not '%s'\n", what, text);
        exit(2);
    }
    return value;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: writer LINE TOTAL [SLEEP]\n");
        return 2;
    }
    unsigned long long line = number(argv[1], "LINE");
    unsigned long long total = number(argv[2], "TOTAL");
    unsigned long long pause = argc == 4 ? number(argv[3], "SLEEP") : 0;
    if (line < 1 || line > BLOCK) {
        fprintf(stderr, "writer: LINE must be from 1 to %lu\n", BLOCK);
        return 2;
    }
    /* One block plus one line: a write may start at any offset within a line. */
    char *pattern = malloc(BLOCK + line);
    if (!pattern) {
        perror("writer: malloc");
        return 1;
    }
    for (unsigned long long i = 0; i < BLOCK + line; i++)
        pattern[i] = i % line == line - 1 ? '\n' : '0';
    unsigned long long done = 0;
    while (done < total) {
        unsigned long long start = done % line;
        size_t size = total - done < BLOCK ? (size_t)(total - done) : BLOCK;
        ssize_t n = write(STDOUT_FILENO, pattern + start, size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "writer: write: %s\n", strerror(errno));
            return 1;
        }
        done += (unsigned long long)n;
    }
    if (pause)
        sleep((unsigned int)pause);
    return 0;
}
