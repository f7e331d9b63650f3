// Command gosdk drives the real Go SDK (github.com/lib4dev/wechat, as Go services use it)
// against a wetoken server, for wetoken-server's integration tests (tests/it/go_sdk.rs, which
// builds it with a go.mod of its own that points the SDK at a local copy).
//
//	gosdk token URL APPID SECRET
//	    mp.NewDefaultAccessTokenByURL(APPID, SECRET, URL).Token()
//	gosdk menu URL APPID SECRET WECHAT
//	    menu.Create through an mp.Context whose http.Client sends api.weixin.qq.com's
//	    requests to WECHAT (the mock WeChat's root URL) instead
//
// It prints one JSON object on stdout: {"ok":true,"token":"…"} or {"ok":false,"error":"…"},
// with "errcode" and "errmsg" when the error is the SDK's *mp.Error. It exits 0 either way; a
// usage error exits 2.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/lib4dev/wechat/mp"
	"github.com/lib4dev/wechat/mp/menu"
)

type outcome struct {
	Ok      bool   `json:"ok"`
	Token   string `json:"token,omitempty"`
	ErrCode *int64 `json:"errcode,omitempty"`
	ErrMsg  string `json:"errmsg,omitempty"`
	Error   string `json:"error,omitempty"`
}

func main() {
	args := os.Args[1:]
	if len(args) < 4 {
		usage()
	}
	command, tokenURL, appid, secret := args[0], args[1], args[2], args[3]
	source := mp.NewDefaultAccessTokenByURL(appid, secret, tokenURL)
	var result outcome
	switch {
	case command == "token" && len(args) == 4:
		token, err := source.Token()
		result = report(err)
		result.Token = token
	case command == "menu" && len(args) == 5:
		wechat, err := url.Parse(args[4])
		if err != nil || wechat.Host == "" {
			usage()
		}
		client := &http.Client{Timeout: 5 * time.Second, Transport: toMock{wechat}}
		result = report(createMenu(mp.NewContextByClient(source, client)))
	default:
		usage()
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		os.Exit(1)
	}
}

// createMenu is the Go wetoken README's example: three buttons, one call.
func createMenu(client *mp.Context) error {
	m := &menu.Menu{Buttons: []menu.Button{
		{Type: menu.ButtonTypeView, Name: "搜索1", URL: "http://www.baidu.com"},
		{Type: menu.ButtonTypeView, Name: "搜索2", URL: "http://www.baidu.com"},
		{Type: menu.ButtonTypeView, Name: "搜索3", URL: "http://www.baidu.com"},
	}}
	return menu.Create(client, m)
}

func report(err error) outcome {
	if err == nil {
		return outcome{Ok: true}
	}
	result := outcome{Error: err.Error()}
	var refused *mp.Error
	if errors.As(err, &refused) {
		result.ErrCode = &refused.ErrCode
		result.ErrMsg = refused.ErrMsg
	}
	return result
}

// toMock sends what the SDK addresses to api.weixin.qq.com to the mock WeChat instead.
type toMock struct{ wechat *url.URL }

func (t toMock) RoundTrip(request *http.Request) (*http.Response, error) {
	if request.URL.Host == "api.weixin.qq.com" {
		request = request.Clone(request.Context())
		request.URL.Scheme = t.wechat.Scheme
		request.URL.Host = t.wechat.Host
		request.Host = t.wechat.Host
	}
	return http.DefaultTransport.RoundTrip(request)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: gosdk token URL APPID SECRET | gosdk menu URL APPID SECRET WECHAT")
	os.Exit(2)
}
