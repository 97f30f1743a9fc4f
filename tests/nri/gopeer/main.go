// nri-gopeer: the runtime side of NRI for memstate's tests, on the real containerd/ttrpc library
// (Debian golang-github-containerd-ttrpc-dev). It owns the NRI socket like containerd does: it
// listens, accepts one plugin, runs its own 8-byte-header connection multiplexer (written from
// the protocol facts in nri.md §2.2, including the Go receiver's rules: one whole frame per read,
// at most 256 queued frames), a ttrpc server for the Runtime service on conn 2 and a ttrpc client
// for the Plugin service on conn 1.
//
// The test drives it with JSON lines on stdin and reads JSON lines on stdout. NRI payloads are
// opaque bytes here (hex): the test builds and checks them with its own protobuf encoder, so this
// program tests the transport against the real library and never interprets NRI messages.
//
//	{"op":"call","id":1,"method":"Configure","payload":"<hex>"} -> {"op":"result","id":1,"code":0,"message":"","payload":"<hex>"}
//	{"op":"restart"}  close the plugin connection, remove and re-create the socket, accept again
//	{"op":"quit"}
//
// Events: {"event":"listening"}, {"event":"connected"}, {"event":"RegisterPlugin","payload":"<hex>"},
// {"event":"UpdateContainers","payload":"<hex>"}, {"event":"closed","error":"..."}.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/status"
)

const (
	pluginConn      = 1
	runtimeConn     = 2
	maxQueued       = 256
	frameHeaderLen  = 8
	maxFramePayload = 4*1024*1024 + 10
)

// rawMessage passes payload bytes through ttrpc's gogo codec untouched.
type rawMessage struct{ data []byte }

func (m *rawMessage) Reset()                   { m.data = nil }
func (m *rawMessage) String() string           { return hex.EncodeToString(m.data) }
func (m *rawMessage) ProtoMessage()            {}
func (m *rawMessage) Marshal() ([]byte, error) { return m.data, nil }
func (m *rawMessage) Unmarshal(b []byte) error {
	m.data = append([]byte(nil), b...)
	return nil
}

// --- output ---------------------------------------------------------------------------------

var outMu sync.Mutex

func emit(v map[string]interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

// --- multiplexer --------------------------------------------------------------------------------

type trunk struct {
	conn    net.Conn
	writeMu sync.Mutex
	conns   map[uint32]*logicalConn
	once    sync.Once
	done    chan struct{}
	err     error
}

type logicalConn struct {
	t      *trunk
	id     uint32
	frames chan []byte
	closed chan struct{}
	once   sync.Once
}

func newTrunk(c net.Conn) *trunk {
	t := &trunk{conn: c, conns: map[uint32]*logicalConn{}, done: make(chan struct{})}
	for _, id := range []uint32{pluginConn, runtimeConn} {
		t.conns[id] = &logicalConn{t: t, id: id, frames: make(chan []byte, maxQueued), closed: make(chan struct{})}
	}
	go t.readLoop()
	return t
}

func (t *trunk) close(err error) {
	t.once.Do(func() {
		t.err = err
		t.conn.Close()
		close(t.done)
		for _, lc := range t.conns {
			lc.Close()
		}
	})
}

func (t *trunk) readLoop() {
	hdr := make([]byte, frameHeaderLen)
	for {
		if _, err := io.ReadFull(t.conn, hdr); err != nil {
			t.close(err)
			return
		}
		id := binary.BigEndian.Uint32(hdr[0:4])
		n := binary.BigEndian.Uint32(hdr[4:8])
		if n > maxFramePayload {
			t.close(fmt.Errorf("frame of %d bytes is too large", n))
			return
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(t.conn, payload); err != nil {
			t.close(err)
			return
		}
		lc, ok := t.conns[id]
		if !ok {
			continue // unknown connection ids are discarded, as the Go side does
		}
		select {
		case lc.frames <- payload:
		default:
			t.close(errors.New("failed to queue payload for reading"))
			return
		}
	}
}

func (t *trunk) writeFrame(id uint32, p []byte) error {
	t.writeMu.Lock()
	defer t.writeMu.Unlock()
	buf := make([]byte, frameHeaderLen+len(p))
	binary.BigEndian.PutUint32(buf[0:4], id)
	binary.BigEndian.PutUint32(buf[4:8], uint32(len(p)))
	copy(buf[frameHeaderLen:], p)
	_, err := t.conn.Write(buf)
	return err
}

// Read hands over exactly one frame and fails when the caller's buffer is too small for it: the
// receiver rule of the real multiplexer (nri.md §2.2), which a plugin's framing must respect.
func (lc *logicalConn) Read(p []byte) (int, error) {
	select {
	case f := <-lc.frames:
		if len(p) < len(f) {
			err := fmt.Errorf("conn %d: frame of %d bytes does not fit a %d-byte read buffer (ENOMEM)", lc.id, len(f), len(p))
			lc.t.close(err)
			return 0, err
		}
		return copy(p, f), nil
	case <-lc.closed:
		return 0, io.EOF
	}
}

func (lc *logicalConn) Write(p []byte) (int, error) {
	select {
	case <-lc.closed:
		return 0, io.ErrClosedPipe
	default:
	}
	if err := lc.t.writeFrame(lc.id, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (lc *logicalConn) Close() error {
	lc.once.Do(func() { close(lc.closed) })
	return nil
}

func (lc *logicalConn) LocalAddr() net.Addr                { return lc.t.conn.LocalAddr() }
func (lc *logicalConn) RemoteAddr() net.Addr               { return lc.t.conn.RemoteAddr() }
func (lc *logicalConn) SetDeadline(t time.Time) error      { return nil }
func (lc *logicalConn) SetReadDeadline(t time.Time) error  { return nil }
func (lc *logicalConn) SetWriteDeadline(t time.Time) error { return nil }

// oneConnListener hands the ttrpc server a single logical connection.
type oneConnListener struct {
	conn   net.Conn
	once   sync.Once
	closed chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.conn })
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, errors.New("listener closed")
}
func (l *oneConnListener) Close() error {
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// --- one plugin session --------------------------------------------------------------------------

type session struct {
	t      *trunk
	client *ttrpc.Client
	server *ttrpc.Server
	lis    *oneConnListener
}

func startSession(c net.Conn) (*session, error) {
	t := newTrunk(c)
	server, err := ttrpc.NewServer()
	if err != nil {
		return nil, err
	}
	handler := func(name string) ttrpc.Method {
		return func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			req := &rawMessage{}
			if err := unmarshal(req); err != nil {
				return nil, err
			}
			emit(map[string]interface{}{"event": name, "payload": hex.EncodeToString(req.data)})
			return &rawMessage{}, nil
		}
	}
	server.Register("nri.pkg.api.v1alpha1.Runtime", map[string]ttrpc.Method{
		"RegisterPlugin":   handler("RegisterPlugin"),
		"UpdateContainers": handler("UpdateContainers"),
	})
	lis := &oneConnListener{conn: t.conns[runtimeConn], closed: make(chan struct{})}
	go server.Serve(context.Background(), lis)
	s := &session{t: t, client: ttrpc.NewClient(t.conns[pluginConn]), server: server, lis: lis}
	go func() {
		<-t.done
		msg := ""
		if t.err != nil {
			msg = t.err.Error()
		}
		emit(map[string]interface{}{"event": "closed", "error": msg})
	}()
	return s, nil
}

func (s *session) close() {
	s.client.Close()
	s.lis.Close()
	s.server.Close()
	s.t.close(errors.New("runtime closed the connection"))
}

// --- main ----------------------------------------------------------------------------------------

type command struct {
	Op      string `json:"op"`
	Method  string `json:"method"`
	Payload string `json:"payload"`
	Timeout int    `json:"timeout_ms"`
	ID      int    `json:"id"`
}

func listen(path string) net.Listener {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	emit(map[string]interface{}{"event": "listening"})
	return l
}

func main() {
	socket := flag.String("socket", "", "NRI socket path to own")
	flag.Parse()

	var (
		mu   sync.Mutex
		cur  *session
		lis  net.Listener
		wait = make(chan struct{}, 1)
	)
	acceptLoop := func(l net.Listener) {
		c, err := l.Accept()
		if err != nil {
			return
		}
		// Announce the connection before the session can serve (and report) RegisterPlugin.
		emit(map[string]interface{}{"event": "connected"})
		s, err := startSession(c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "session:", err)
			os.Exit(2)
		}
		mu.Lock()
		cur = s
		mu.Unlock()
		select {
		case wait <- struct{}{}:
		default:
		}
	}
	lis = listen(*socket)
	go acceptLoop(lis)

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64*1024*1024), 64*1024*1024)
	for in.Scan() {
		var cmd command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			fmt.Fprintln(os.Stderr, "bad command:", err)
			os.Exit(2)
		}
		switch cmd.Op {
		case "call":
			mu.Lock()
			s := cur
			mu.Unlock()
			if s == nil {
				emit(map[string]interface{}{"op": "result", "code": -1, "message": "no plugin connected"})
				continue
			}
			payload, err := hex.DecodeString(cmd.Payload)
			if err != nil {
				fmt.Fprintln(os.Stderr, "bad payload:", err)
				os.Exit(2)
			}
			timeout := time.Duration(cmd.Timeout) * time.Millisecond
			if timeout == 0 {
				timeout = 30 * time.Second
			}
			// Calls run concurrently, as the runtime's may (Configure during RegisterPlugin).
			go func(method string, id int) {
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				resp := &rawMessage{}
				err := s.client.Call(ctx, "nri.pkg.api.v1alpha1.Plugin", method, &rawMessage{data: payload}, resp)
				out := map[string]interface{}{"op": "result", "id": id, "method": method, "code": 0, "message": "", "payload": hex.EncodeToString(resp.data)}
				if err != nil {
					if st, ok := status.FromError(err); ok {
						out["code"] = int(st.Code())
						out["message"] = st.Message()
					} else {
						out["code"] = -1
						out["message"] = err.Error()
					}
				}
				emit(out)
			}(cmd.Method, cmd.ID)
		case "restart":
			mu.Lock()
			if cur != nil {
				cur.close()
				cur = nil
			}
			mu.Unlock()
			lis.Close()
			lis = listen(*socket)
			go acceptLoop(lis)
		case "quit":
			os.Exit(0)
		default:
			fmt.Fprintln(os.Stderr, "unknown op:", cmd.Op)
			os.Exit(2)
		}
	}
}
