/** @type {import('next').NextConfig} */
const nextConfig = {
  poweredByHeader: false,
  async headers() {
    // The gateway adds `Content-Security-Policy: default-src 'none'` to any response that has
    // none, right for JSON but fatal for a page. Pages get their own policy (a handler's own
    // value wins): scripts and styles from this origin only; 'unsafe-inline' because the App
    // Router streams inline <script> chunks (a nonce needs dynamic rendering of every page).
    return [
      {
        source: '/:path((?!api/).*)',
        headers: [
          {
            key: 'Content-Security-Policy',
            value:
              "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; " +
              "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; " +
              "form-action 'self'; frame-ancestors 'none'",
          },
        ],
      },
    ];
  },
};

export default nextConfig;
