// berth-shim: the warm path's client, installed as <cni bin>/berth-bridge and <cni bin>/berth-ipam.
//
// It forwards one CNI invocation (its plugin name, its whole environment and stdin) to berthd over the
// daemon's unix socket (`POST /v1/cni`, see README "Warm path") and writes the reply back unchanged:
// stdout bytes to fd 1, stderr bytes to fd 2, the plugin's exit code. It parses no JSON: the reply's
// headers carry the exit code and where stdout ends.
//
// When berthd did nothing (no socket, connection refused, any status but 200) it execs the standalone
// program instead: `berth` beside this file, run under the plugin's name, fed the same stdin bytes through
// a memfd (a pipe without one), so a node without berthd works exactly as without the shim. Once the whole
// request has been sent, berthd may be running the call: a lost, garbled or late reply is then a CNI error
// with code 11 (try again later) rather than a second run, and the runtime's retry or DEL cleans up.
//
// libc only, built statically when libc.a is there (npm run build:shim); no allocation that matters, no
// threads, no signal touched before the last exec (the standalone program inherits the caller's dispositions;
// the only child, replay_pipe's writer, ignores SIGPIPE in itself).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *const PLUGINS[] = {"berth-bridge", "berth-ipam"};
// The commands whose stdin the standalone adapter reads (src/cni-spec/process-io.ts needsStdin).
static const char *const STDIN_COMMANDS[] = {"ADD", "DEL", "CHECK", "GC", "STATUS"};
static const char DEFAULT_SOCKET[] = "/run/berth/berthd.sock";
// berthd's own deadline per call (120 s), plus the 30 s a failed ADD's rollback may take after it, plus a
// margin, so that berthd's answer (a CNI error) normally wins.
static const double DEFAULT_TIMEOUT_S = 160;
static const size_t MAX_HEAD = 64 * 1024;
// A plugin's stdout and stderr are a few KiB; a reply announcing more is not read into memory.
static const long long MAX_REPLY = 64LL << 20;

struct buf {
  char *p;
  size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t more) {
  if (b->len + more <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more) cap *= 2;
  char *p = realloc(b->p, cap);
  if (p == NULL) return -1;
  b->p = p;
  b->cap = cap;
  return 0;
}

static int buf_add(struct buf *b, const void *s, size_t n) {
  if (buf_reserve(b, n) != 0) return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}

static int buf_str(struct buf *b, const char *s) { return buf_add(b, s, strlen(s)); }

// A JSON string body: `"` and `\` escaped, control characters as \u00XX; every other byte as is (berthd
// decodes the body as UTF-8, as the standalone adapter decodes stdin and its environment).
static int buf_json(struct buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  if (buf_reserve(b, n + 2) != 0) return -1;
  size_t start = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    if (buf_add(b, s + start, i - start) != 0) return -1;
    char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
    size_t len = 2;
    if (c < 0x20) {
      memcpy(esc, "\\u00", 4);
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      len = 6;
    }
    if (buf_add(b, esc, len) != 0) return -1;
    start = i + 1;
  }
  return buf_add(b, s + start, n - start);
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/** Writes all of it; a non-blocking stdout or stderr (as some parents pass them) is waited on, not cut short. */
static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, -1) >= 0 || errno == EINTR) continue;
      }
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static const char *plugin = "berth-shim";
static const char *command = "";
static char self_dir[PATH_MAX];

/** Prints one CNI error object on stdout and its story on stderr, as the plugins' reportFailure does. */
static int fail(int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  // Paths and strerror text may hold bytes that are not UTF-8; JSON must be (libcni tolerates it, others not).
  for (char *c = msg; *c; c++)
    if ((unsigned char)*c >= 0x80) *c = '?';
  // Nothing is exec'd after a failure: a caller that closed its end gets EPIPE here, not a death by SIGPIPE.
  signal(SIGPIPE, SIG_IGN);
  struct buf out = {0};
  char head[32];
  snprintf(head, sizeof head, "{\"code\":%d,\"msg\":\"", code);
  if (buf_str(&out, head) == 0 && buf_json(&out, msg, strlen(msg)) == 0 && buf_str(&out, "\"}\n") == 0)
    write_all(1, out.p, out.len);
  char story[1200];
  int n = snprintf(story, sizeof story, "%s: %s failed: code %d: %s\n", plugin,
                   *command ? command : "no command", code, msg);
  if (n > 0) write_all(2, story, (size_t)n < sizeof story ? (size_t)n : sizeof story - 1);
  return 1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/** Waits for `events` on fd until the deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, double deadline) {
  for (;;) {
    double left = deadline - now_s();
    if (left <= 0) return 0;
    struct pollfd p = {.fd = fd, .events = events};
    int ms = left > 3600 ? 3600 * 1000 : (int)(left * 1000) + 1;
    int r = poll(&p, 1, ms);
    if (r > 0) return 1;
    if (r < 0 && errno != EINTR) return -1;
  }
}

/** Reads all of stdin (also a non-blocking one, as inherited from some parents). */
static int read_stdin(struct buf *b) {
  for (;;) {
    if (buf_reserve(b, 65536) != 0) return -1;
    ssize_t r = read(0, b->p + b->len, b->cap - b->len);
    if (r > 0) {
      b->len += (size_t)r;
      continue;
    }
    if (r == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      struct pollfd p = {.fd = 0, .events = POLLIN};
      if (poll(&p, 1, -1) < 0 && errno != EINTR) return -1;
      continue;
    }
    return -1;
  }
}

/**
 * Without a memfd (kernel < 3.17, or a seccomp profile that refuses it): the stdin bytes in a pipe. A pipe
 * holds up to its capacity without a reader, which is enough for any config; more than that is written by a
 * child process while the standalone program reads (written here, it would wait for a reader that is only
 * exec'd afterwards, for good). The child holds no end of the caller's stdout or stderr, so the runtime sees
 * their end when the program exits; a program that exits without reading all of it ends the child by EPIPE.
 */
static int replay_pipe(const struct buf *in) {
  int p[2];
  if (pipe(p) != 0) return -1;
  fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
  int capacity = fcntl(p[1], F_GETPIPE_SZ);
  if (capacity > 0 && in->len <= (size_t)capacity) {
    if (write_all(p[1], in->p ? in->p : "", in->len) != 0) goto failed;
    close(p[1]);
    return p[0];
  }
  pid_t writer = fork();
  if (writer < 0) goto failed;
  if (writer == 0) {
    close(p[0]);
    close(1);
    close(2);
    signal(SIGPIPE, SIG_IGN);
    _exit(write_all(p[1], in->p, in->len) == 0 ? 0 : 1);
  }
  close(p[1]);
  return p[0];
failed:
  close(p[0]);
  close(p[1]);
  return -1;
}

/**
 * Runs the standalone program in this process: `berth` beside the shim, under the plugin's name
 * (argv[0], which the single executable reads; BERTH_FALLBACK_PROGRAM for a development tree's Node
 * launcher, which cannot see argv[0]). The stdin bytes already read become fd 0 again.
 */
static int fall_back(char **argv, const struct buf *in, int stdin_read) {
  char exe[PATH_MAX + 16], name[PATH_MAX + 32];
  snprintf(exe, sizeof exe, "%s/berth", self_dir);
  snprintf(name, sizeof name, "%s/%s", self_dir, plugin);
  if (stdin_read) {
    int fd = memfd_create("berth-stdin", 0);
    if (fd >= 0) {
      if (write_all(fd, in->p ? in->p : "", in->len) != 0 || lseek(fd, 0, SEEK_SET) != 0) {
        close(fd);
        fd = -1;
      }
    }
    if (fd < 0) fd = replay_pipe(in);
    if (fd < 0) return fail(11, "cannot replay stdin to %s: %s", exe, strerror(errno));
    if (fd != 0) {
      if (dup2(fd, 0) < 0) return fail(11, "cannot replay stdin to %s: %s", exe, strerror(errno));
      close(fd);
    }
  }
  setenv("BERTH_FALLBACK_PROGRAM", plugin, 1);
  // Started with no arguments at all (argc 0, which kernels before 5.18 allow), argv[0] is the NULL that
  // ends argv and the environment follows it: only the name is passed on then, not the environment as
  // arguments.
  char *alone[] = {name, NULL};
  if (argv[0] == NULL) argv = alone;
  argv[0] = name;
  execv(exe, argv);
  return fail(999, "berthd did not take the call and the standalone program %s cannot be run: %s", exe,
              strerror(errno));
}

/** The value of header `name` in the reply head (lines after the status line), or NULL. */
static const char *header(const char *head, const char *name) {
  size_t n = strlen(name);
  for (const char *line = strstr(head, "\r\n"); line != NULL; line = strstr(line, "\r\n")) {
    line += 2;
    if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
      const char *v = line + n + 1;
      while (*v == ' ' || *v == '\t') v++;
      return v;
    }
  }
  return NULL;
}

/** A decimal header value up to `max`; -1 if absent or not a plain number. */
static long long number_header(const char *head, const char *name, long long max) {
  const char *v = header(head, name);
  if (v == NULL || *v < '0' || *v > '9') return -1;
  long long n = 0;
  for (; *v >= '0' && *v <= '9'; v++) {
    n = n * 10 + (*v - '0');
    if (n > max) return -1;
  }
  while (*v == ' ' || *v == '\t') v++;
  return v[0] == '\r' && v[1] == '\n' ? n : -1;
}

static int known(const char *s, const char *const *list, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(s, list[i]) == 0) return 1;
  return 0;
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

int main(int argc, char **argv) {
  (void)argc;
  static char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) return fail(999, "cannot read /proc/self/exe: %s", strerror(errno));
  exe[len] = 0;
  // A caller may set argv[0] to anything; a hard link's own name (in /proc/self/exe) decides then.
  const char *from_argv = argv[0] ? base_name(argv[0]) : "";
  const char *from_exe = base_name(exe);
  if (known(from_argv, PLUGINS, 2))
    plugin = from_argv;
  else if (known(from_exe, PLUGINS, 2))
    plugin = from_exe;
  else
    return fail(999, "started as \"%s\"; install it as berth-bridge or berth-ipam beside berth",
                from_argv);
  memcpy(self_dir, exe, (size_t)(from_exe - exe));
  self_dir[from_exe - exe > 1 ? from_exe - exe - 1 : from_exe - exe] = 0;

  const char *env_command = getenv("CNI_COMMAND");
  command = env_command ? env_command : "";
  struct buf in = {0};
  int stdin_read = known(command, STDIN_COMMANDS, sizeof STDIN_COMMANDS / sizeof *STDIN_COMMANDS);
  if (stdin_read && read_stdin(&in) != 0) {
    // Nothing was forwarded: the standalone program reads (or fails to read) stdin itself.
    if (in.len == 0) return fall_back(argv, &in, 0);
    return fail(5, "cannot read stdin: %s", strerror(errno));
  }

  const char *path = getenv("BERTH_SOCKET");
  if (path == NULL || *path == 0) path = DEFAULT_SOCKET;
  double timeout = DEFAULT_TIMEOUT_S;
  const char *t = getenv("BERTH_SHIM_TIMEOUT");
  if (t != NULL && *t) {
    char *end;
    double v = strtod(t, &end);
    if (*end == 0 && v > 0) timeout = v;
  }

  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) return fall_back(argv, &in, stdin_read);
  strcpy(addr.sun_path, path);
  // Non-blocking from the start: a blocking connect(2) waits without limit while berthd's listen queue is
  // full (berthd stopped, or not accepting). EAGAIN then, like any failure here, means nothing was sent.
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (sock < 0) return fall_back(argv, &in, stdin_read);
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0)
    return close(sock), fall_back(argv, &in, stdin_read);
  // Only a berthd of root's (or of this user's) gets the call and its environment, and is believed: a
  // socket path where another user could listen (a directory others write) must not forge our result.
  struct ucred peer;
  socklen_t peer_len = sizeof peer;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0 ||
      (peer.uid != 0 && peer.uid != geteuid()))
    return close(sock), fall_back(argv, &in, stdin_read);

  // The request: the body first (its length goes in the head), then both in one send when they fit.
  struct buf body = {0};
  int ok = buf_str(&body, "{\"v\":1,\"plugin\":\"") == 0 && buf_str(&body, plugin) == 0 &&
           buf_str(&body, "\",\"env\":{") == 0;
  int first = 1;
  for (char **e = environ; ok && *e; e++) {
    const char *eq = strchr(*e, '=');
    if (eq == NULL || eq == *e) continue;
    ok = buf_str(&body, first ? "\"" : ",\"") == 0 && buf_json(&body, *e, (size_t)(eq - *e)) == 0 &&
         buf_str(&body, "\":\"") == 0 && buf_json(&body, eq + 1, strlen(eq + 1)) == 0 &&
         buf_str(&body, "\"") == 0;
    first = 0;
  }
  ok = ok && buf_str(&body, "},\"stdin\":\"") == 0 && buf_json(&body, in.p ? in.p : "", in.len) == 0 &&
       buf_str(&body, "\"}") == 0;
  struct buf req = {0};
  char head[256];
  snprintf(head, sizeof head,
           "POST /v1/cni HTTP/1.1\r\nHost: berthd\r\nContent-Type: application/json\r\n"
           "Content-Length: %zu\r\nConnection: close\r\n\r\n",
           body.len);
  ok = ok && buf_str(&req, head) == 0 && buf_add(&req, body.p, body.len) == 0;
  if (!ok) return close(sock), fall_back(argv, &in, stdin_read);
  free(body.p);

  double deadline = now_s() + timeout;
  for (size_t sent = 0; sent < req.len;) {
    ssize_t w = send(sock, req.p + sent, req.len - sent, MSG_NOSIGNAL);
    if (w >= 0) {
      sent += (size_t)w;
      continue;
    }
    if (errno == EINTR) continue;
    // Until the last byte is out berthd cannot have started the call: running it here is safe.
    if (errno != EAGAIN || wait_fd(sock, POLLOUT, deadline) != 1)
      return close(sock), fall_back(argv, &in, stdin_read);
  }
  free(req.p);

  // The reply: a head, then Content-Length bytes. Nothing is written before all of it is here.
  struct buf rep = {0};
  size_t head_len = 0;  // through the blank line; 0 until it has arrived
  long long content_length = -1, stdout_length = -1, exit_code = -1;
  for (;;) {
    if (head_len > 0 && (long long)(rep.len - head_len) >= content_length) break;
    if (buf_reserve(&rep, 65536) != 0) return fail(11, "%s: out of memory reading berthd's reply", path);
    ssize_t r = recv(sock, rep.p + rep.len, rep.cap - rep.len, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        int ready = wait_fd(sock, POLLIN, deadline);
        if (ready == 1) continue;
        if (ready == 0)
          return fail(11,
                      "berthd (%s) did not answer within %g s (BERTH_SHIM_TIMEOUT); the call may still be "
                      "running there: try again later",
                      path, timeout);
      }
      // A unix socket is reset only when closed with some of the request still unread: berthd starts a
      // call once it has read the whole body, so it cannot have run this one (stopped before accepting,
      // or died while reading). The standalone program is safe to run.
      if (errno == ECONNRESET && rep.len == 0) return close(sock), fall_back(argv, &in, stdin_read);
      return fail(11, "lost the connection to berthd (%s) after sending the call: %s; try again later",
                  path, strerror(errno));
    }
    if (r == 0) {
      if (head_len == 0)
        return fail(11,
                    "berthd (%s) closed the connection without answering (%zu bytes of reply); the call "
                    "may have run: try again later",
                    path, rep.len);
      return fail(11, "berthd's reply (%s) was cut short: %zu of %lld bytes; try again later", path,
                  rep.len - head_len, content_length);
    }
    rep.len += (size_t)r;
    if (head_len > 0) continue;
    if (buf_reserve(&rep, 1) != 0) return fail(11, "%s: out of memory reading berthd's reply", path);
    rep.p[rep.len] = 0;  // the head is searched as a string; a NUL inside it makes it malformed below
    char *end_of_head = memmem(rep.p, rep.len, "\r\n\r\n", 4);
    if (end_of_head == NULL) {
      if (rep.len > MAX_HEAD) return fail(11, "berthd's reply (%s) has no end of headers; try again later", path);
      continue;
    }
    end_of_head[2] = 0;  // the head as a string ending in its last header's \r\n
    head_len = (size_t)(end_of_head + 4 - rep.p);
    // "HTTP/1.x NNN" then a space or the end of the line: exactly three digits.
    const char *st = rep.p + 9;
    if (strncmp(rep.p, "HTTP/1.", 7) != 0 || rep.p[8] != ' ' || !is_digit(st[0]) || !is_digit(st[1]) ||
        !is_digit(st[2]) || (st[3] != ' ' && st[3] != '\r')) {
      return fail(11, "berthd's reply (%s) is not HTTP: try again later", path);
    }
    int status = (st[0] - '0') * 100 + (st[1] - '0') * 10 + (st[2] - '0');
    if (status != 200) {
      // 421 not served here, 503 draining, 403 not root, 400 malformed...: berthd did nothing.
      close(sock);
      return fall_back(argv, &in, stdin_read);
    }
    content_length = number_header(rep.p, "content-length", 1LL << 40);
    stdout_length = number_header(rep.p, "berth-stdout-length", 1LL << 40);
    exit_code = number_header(rep.p, "berth-exit-code", 255);
    if (content_length > MAX_REPLY)
      return fail(11,
                  "berthd's reply (%s) announces %lld bytes, more than the %lld a shim reads: try again "
                  "later",
                  path, content_length, MAX_REPLY);
    if (content_length < 0 || stdout_length < 0 || exit_code < 0 || stdout_length > content_length)
      return fail(11,
                  "berthd's reply (%s) lacks a valid Content-Length, Berth-Exit-Code or "
                  "Berth-Stdout-Length: try again later",
                  path);
  }
  close(sock);
  // No exec from here on (the standalone program inherits the caller's dispositions): a runtime that closed
  // its end of stdout makes the write fail with EPIPE, as it does the standalone program, instead of killing us.
  signal(SIGPIPE, SIG_IGN);
  const char *body_start = rep.p + head_len;
  if (write_all(1, body_start, (size_t)stdout_length) != 0) return 1;
  write_all(2, body_start + stdout_length, (size_t)(content_length - stdout_length));
  return (int)exit_code;
}
