/* A tiny "service" for `hotpatch demo`: answers one line per request on stdin.
 * Its greeting copies the name into a fixed buffer without a bound: the bug
 * the demo patch fixes, live, while the request counter keeps its value. */
#include <stdio.h>
#include <string.h>

static int requests;

__attribute__((noinline)) static const char *salutation(void) { return "hello"; }

/* noinline: in one file gcc -O2 would inline greet into main, and a patch
 * replaces functions that are called, not code already copied into callers. */
__attribute__((noinline)) int greet(const char *name, char *out, size_t size)
{
    char buf[32];
    requests++;
    strcpy(buf, name);               /* overflows for long names */
    return snprintf(out, size, "%s, %s (request %d)", salutation(), buf, requests);
}

int main(void)
{
    char line[256], out[512];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        greet(line, out, sizeof out);
        printf("%s\n", out);
    }
    return 0;
}
